"""A trajectory-matching method added from outside datadistill: the whole of it.

``toy_ftd`` is FTD with a five times larger GSAM radius, scored by ``datadistill score``
with DD-Ranking's DC preset (no augmentation). It is this package and nothing else:

- the one registry line below (its description, where its configs live, its DD-Ranking
  preset);
- ``configs/_methods/toy_ftd.yaml``: its default values, extending the shipped ``ftd``;
- ``configs/digits/toy_ftd_ipc1.yaml``: a digits setting small enough to run in seconds.

Importing the package registers the method; ``tests/test_toy_method.py`` runs it through the
CLI, the report and ``score``.
"""

from pathlib import Path

from datadistill.tm.presets import Preset, register_preset

PRESET = register_preset(Preset(
    name="toy_ftd",
    paper="Toy method of the datadistill test suite (no paper), built on Du et al., CVPR 2023",
    changes="FTD with GSAM radius rho 0.05 instead of 0.01; scored with DD-Ranking's DC preset",
    deviations=("not a published method: it exists to show how a method is added",),
    ddranking="hard_noaug"), configs=Path(__file__).parent / "configs")
