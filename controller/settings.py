"""Where things are: the ComfyUI install.py set up, the state folder, the database, the character library.

install.py records its choices in .shotline/install.json; environment variables override them:
- SHOTLINE_HOME: the state folder (default: .shotline/ in a source checkout, else ~/.shotline);
- SHOTLINE_COMFYUI, SHOTLINE_COMFYUI_PYTHON: a ComfyUI and the Python that runs it;
- DATABASE_URL: a PostgreSQL to use instead of the embedded one;
- SHOTLINE_CHARACTER_LIBRARY: the character library (default: that ComfyUI's models/shotline_characters);
- SHOTLINE_ASSEMBLIES: where scene MP4s go, in a folder per batch (default: <state>/assemblies);
- SHOTLINE_LIBRARY: the show folder episodes go to, as `Season NN/SxxEyy - Title.mp4` (default: <state>/library).
The ComfyUI a controller starts itself writes its outputs, inputs and temp files under <state>/comfyui/.
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
RANDOM_CHECKPOINT_NAME = "shotline-random-sd15-v2.safetensors"  # v2: TAESD vae_scale 1 (v1 had 0: NaN encodes)


def is_random_checkpoint(name: str | None) -> bool:
    """A random-weights test checkpoint (install's, or a variant tests build): it draws noise, never a subject."""
    return bool(name) and Path(name).name.startswith("shotline-random")

CHARACTER_FOLDER = "shotline_characters"   # the model folder the pack registers


class SettingsError(RuntimeError):
    """A setting that is missing for what was asked; the message says what to set."""


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    comfyui_dir: Path | None
    comfyui_python: Path | None
    extra_model_paths: Path | None
    database_url: str | None
    assemblies_root: Path | None = None   # default: state_dir/assemblies
    library_root: Path | None = None      # default: state_dir/library
    character_library_root: Path | None = None  # default: comfyui_dir/models/shotline_characters

    @property
    def postgres_data_dir(self) -> Path:
        return self.state_dir / "pgdata"

    @property
    def assemblies_dir(self) -> Path:
        return self.assemblies_root or self.state_dir / "assemblies"

    @property
    def library_dir(self) -> Path:
        return self.library_root or self.state_dir / "library"

    @property
    def comfyui_state_dir(self) -> Path:
        """Outputs, inputs, temp and user files of a ComfyUI this controller starts."""
        return self.state_dir / "comfyui"

    @property
    def character_library(self) -> Path:
        if self.character_library_root:
            return self.character_library_root
        if not self.comfyui_dir:
            raise SettingsError("no character library: set SHOTLINE_CHARACTER_LIBRARY (or pass --library), or run "
                                "install.py")
        return self.comfyui_dir / "models" / CHARACTER_FOLDER

    @property
    def character_library_if_any(self) -> Path | None:
        return self.character_library if self.character_library_root or self.comfyui_dir else None


def load_settings() -> Settings:
    state_dir = Path(os.environ.get("SHOTLINE_HOME", DEFAULT_STATE_DIR)).expanduser().resolve()
    state_file = state_dir / "install.json"
    recorded = json.loads(state_file.read_text()) if state_file.exists() else {}

    def path(env: str, key: str) -> Path | None:
        value = os.environ.get(env) or recorded.get(key)
        return Path(value).expanduser() if value else None

    return Settings(
        state_dir=state_dir,
        comfyui_dir=path("SHOTLINE_COMFYUI", "comfyui"),
        comfyui_python=path("SHOTLINE_COMFYUI_PYTHON", "comfyui_python"),
        extra_model_paths=path("SHOTLINE_EXTRA_MODEL_PATHS", "extra_model_paths"),
        database_url=os.environ.get("DATABASE_URL") or None,
        assemblies_root=path("SHOTLINE_ASSEMBLIES", "assemblies"),
        library_root=path("SHOTLINE_LIBRARY", "library"),
        character_library_root=path("SHOTLINE_CHARACTER_LIBRARY", "character_library"),
    )
