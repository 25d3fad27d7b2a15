"""The built-in mechanisms as plain data, for what must answer without torch: ``dynsearch list``, the
front and trial tables, did-you-mean.

The registry (``dynsearch.dynamic.mechanisms()``) is the truth; importing it imports
torch and every mechanism (about 2 s). This card repeats, for each built-in
mechanism, its name, family and paper and where its config records its dynamic
parts; tests/test_everyday.py checks it against the registry (and each
mechanism's ``placement``) so the two cannot drift. Plugins' mechanisms are
read from the registry (they are imported only when a plugin is installed).
Imports nothing of dynsearch.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass(frozen=True)
class MechanismCard:
    name: str
    family: str
    paper: str
    section: str | None = None  # the trial config's section naming where the dynamic parts sit
    key: str | None = None  # that section's list of positions
    what: str = ""  # what the positions are, e.g. "exits after stages"


_DR = "budget objective from dynamic routing (Li et al., CVPR 2020, arXiv 2003.10401)"
BUILTIN_MECHANISMS: dict[str, MechanismCard] = {card.name: card for card in (
    MechanismCard("exits", "exits", "BranchyNet (Teerapittayanon et al., ICPR 2016) with the exit rules of DeeBERT "
                  "(arXiv 2004.12993), FastBERT (arXiv 2004.02178) and PABEE (arXiv 2006.04152)",
                  "exits", "stages", "exits after stages"),
    MechanismCard("depth_adaptive", "exits", "Depth-Adaptive Transformer (Elbayad et al., ICLR 2020, arXiv "
                  "1910.10073): per-sequence exit depth", "exits", "stages", "exits after stages"),
    MechanismCard("moe", "experts", "Sparsely-gated mixture of experts (Shazeer et al., ICLR 2017, arXiv 1701.06538); "
                  "load-balancing loss and capacity factor of the Switch Transformer (Fedus et al., JMLR 2022, "
                  "arXiv 2101.03961)", "experts", "layers", "expert layers"),
    MechanismCard("condconv", "experts", "CondConv: conditionally parameterized convolutions (Yang et al., "
                  "NeurIPS 2019, arXiv 1904.04971)", "condconv", "layers", "CondConv blocks"),
    MechanismCard("aig", "gates", f"ConvNet-AIG (Veit & Belongie, ECCV 2018, arXiv 1711.11503); {_DR}",
                  "gates", "blocks", "gated blocks"),
    MechanismCard("skipnet", "gates", f"SkipNet feed-forward gates (Wang et al., ECCV 2018, arXiv 1711.09485); {_DR}",
                  "gates", "blocks", "gated blocks"),
    MechanismCard("act", "halting", "Adaptive Computation Time (Graves 2016, arXiv 1603.08983)"),
    MechanismCard("pondernet", "halting", "PonderNet (Banino, Balaguer & Blundell 2021, arXiv 2107.05407)"),
    MechanismCard("glance", "glance", "Glance and Focus networks, GFNet (Wang et al., NeurIPS 2020, arXiv 2010.05300)"),
)}


def builtin_placement(config: dict[str, Any]) -> str | None:
    """Where a built-in mechanism's config puts its dynamic parts (``"0,1"``, as its ``placement``
    says; ``"-"`` for none); None for a mechanism that is not built in."""
    card = BUILTIN_MECHANISMS.get(config.get("mechanism"))
    if card is None:
        return None
    if card.section is None:
        return "-"
    positions = (config.get(card.section) or {}).get(card.key)
    return ",".join(map(str, positions or [])) or "-"


def describe_placement(config: dict[str, Any]) -> str:
    """Where a built-in mechanism's dynamic parts sit, in words: ``"exits after stages 0,1"``; ``"-"`` when
    nowhere or not built in (a plugin's: see ``placement``)."""
    card = BUILTIN_MECHANISMS.get(config.get("mechanism"))
    where = builtin_placement(config)
    if card is None or where in (None, "-"):
        return "-"
    return f"{card.what} {where}"


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'search'?"`` when ``word`` is close to one of ``choices`` (difflib), else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""
