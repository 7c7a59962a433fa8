-- Named schemas: raw (what was loaded, as it came), features (snapshots), serving (prediction log),
-- monitoring (drift and performance), synthetic (the simulator's own state and ground truth).
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS features;
CREATE SCHEMA IF NOT EXISTS serving;
CREATE SCHEMA IF NOT EXISTS monitoring;
CREATE SCHEMA IF NOT EXISTS synthetic;
