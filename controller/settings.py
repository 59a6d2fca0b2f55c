"""Where things are: the ComfyUI install.py set up, the state folder, the database.

install.py records its choices in .shotline/install.json; environment variables override them:
SHOTLINE_HOME (state folder), SHOTLINE_COMFYUI and SHOTLINE_COMFYUI_PYTHON (a ComfyUI and its Python),
DATABASE_URL (a PostgreSQL to use instead of the embedded one), SHOTLINE_ASSEMBLIES (where scene MP4s go, in a
folder per batch) and SHOTLINE_LIBRARY (the show folder episodes go to, as `Season NN/SxxEyy - Title.mp4`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

# A source checkout (install.py beside the package) keeps its state in .shotline/ there; an installed package
# in ~/.shotline. SHOTLINE_HOME overrides both.
_CHECKOUT = Path(__file__).resolve().parent.parent
PROJECT_ROOT = _CHECKOUT if (_CHECKOUT / "install.py").is_file() else None
DEFAULT_STATE_DIR = (PROJECT_ROOT / ".shotline") if PROJECT_ROOT else Path.home() / ".shotline"
RANDOM_CHECKPOINT_NAME = "shotline-random-sd15.safetensors"


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    comfyui_dir: Path | None
    comfyui_python: Path | None
    extra_model_paths: Path | None
    database_url: str | None
    assemblies_root: Path | None = None   # default: state_dir/assemblies
    library_root: Path | None = None      # default: state_dir/library

    @property
    def postgres_data_dir(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def assemblies_dir(self) -> Path:
        return self.assemblies_root or self.state_dir / "assemblies"

    @property
    def library_dir(self) -> Path:
        return self.library_root or self.state_dir / "library"


def load_settings() -> Settings:
    state_dir = Path(os.environ.get("SHOTLINE_HOME", DEFAULT_STATE_DIR)).resolve()
    state_file = state_dir / "install.json"
    recorded = json.loads(state_file.read_text()) if state_file.exists() else {}

    def path(env: str, key: str) -> Path | None:
        value = os.environ.get(env) or recorded.get(key)
        return Path(value) if value else None

    return Settings(
        state_dir=state_dir,
        comfyui_dir=path("SHOTLINE_COMFYUI", "comfyui"),
        comfyui_python=path("SHOTLINE_COMFYUI_PYTHON", "comfyui_python"),
        extra_model_paths=path("SHOTLINE_EXTRA_MODEL_PATHS", "extra_model_paths"),
        database_url=os.environ.get("DATABASE_URL") or None,
        assemblies_root=path("SHOTLINE_ASSEMBLIES", "assemblies"),
        library_root=path("SHOTLINE_LIBRARY", "library"),
    )
