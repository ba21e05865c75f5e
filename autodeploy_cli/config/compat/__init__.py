"""Reading other tools' config files (TensorRT-LLM AutoDeploy's shapes and keys) onto ad's schema.

keys.py: the anchor's keys and what happens to each (data); report.py: the notes and warnings of one resolve and
the rename/drop rules; reader.py: the file shapes and layers (`AnchorCompat`).
"""

from autodeploy_cli.config.compat.reader import AnchorCompat
from autodeploy_cli.config.compat.report import CompatReport

__all__ = ["AnchorCompat", "CompatReport"]
