"""Figures (matplotlib): every function returns a Figure and writes nothing; the CLI saves them.

Importing any module of this package selects the non-interactive Agg backend first, so plots
work without a display.
"""

import matplotlib

matplotlib.use("Agg")
