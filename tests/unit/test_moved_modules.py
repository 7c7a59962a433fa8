"""A version registered before the model's types moved to `churn_platform.model` still loads and scores the same."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import skops.io
from tests.small_models import small_frame, small_pipeline

from churn_platform.model.encoding import FeatureEncoder

# Where our types lived before the model package: a saved model names them by these paths.
MOVED_MODULES = {
    "churn_platform.training.encoding": "churn_platform.model.encoding",
    "churn_platform.training.candidates": "churn_platform.model.candidates",
}


def _as_registered_before_the_move(archive: bytes) -> bytes:
    """The same skops archive with every module path of ours spelled as it was before the move."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(archive)) as old, zipfile.ZipFile(out, "w") as new:
        for item in old.infolist():
            data = old.read(item.filename)
            if item.filename.endswith(".json"):
                text = data.decode()
                for before, now in MOVED_MODULES.items():
                    text = text.replace(f'"{now}"', f'"{before}"')
                data = text.encode()
            new.writestr(item, data)
    return out.getvalue()


def test_a_model_saved_under_the_old_module_paths_loads_and_scores_the_same() -> None:
    # Given a pipeline saved as a version registered before the move would have been
    model, (frame, _) = small_pipeline(3, rows=300), small_frame(3, rows=300)
    old = _as_registered_before_the_move(skops.io.dumps(model))
    names = skops.io.get_untrusted_types(data=old)
    assert any(name.startswith("churn_platform.training.") for name in names)  # the archive names the old paths

    # When it is loaded as any loader would (`mlflow models serve`, `mlflow.sklearn.load_model`: no help from us)
    loaded = skops.io.loads(old, trusted=names)

    # Then it is the platform's pipeline and scores exactly as the original
    assert isinstance(loaded.named_steps["encode"], FeatureEncoder)
    np.testing.assert_array_equal(loaded.predict_proba(frame), model.predict_proba(frame))
