"""A/B experiments: sticky assignment of users to arms, and the experiment records in PostgreSQL."""
