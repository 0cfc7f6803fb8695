"""Where an in-LLM method prunes and how many image tokens each stage keeps, checked against the model.

A schedule is S stages: after decoder layer layers[i] (0-based), the image keeps budgets[i] of its
tokens, for every later layer. The last budget is the method's budget K (the `--tokens` of the cell).
Without explicit budgets each stage keeps the same fraction α = (K / N)^(1/S) of the previous one (BTP:
"each stage retains a fixed fraction of image tokens from the previous stage"; PyramidDrop's λ).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError


@dataclass(frozen=True)
class Schedule:
    layers: tuple[int, ...]  # prune after these decoder layers, ascending
    budgets: tuple[int, ...]  # image tokens kept after each, non-increasing; the last is K

    @property
    def n_stages(self) -> int:
        return len(self.layers)

    def tokens_per_layer(self, n_full: int, n_layers: int) -> list[int]:
        """The image tokens each decoder layer processes under this schedule."""
        kept, counts = n_full, []
        for index in range(n_layers):
            counts.append(kept)
            if index in self.layers:
                kept = self.budgets[self.layers.index(index)]
        return counts


def geometric_budgets(n_keep: int, n_full: int, n_stages: int) -> tuple[int, ...]:
    """S budgets from N down to K, each the same fraction of the one before (rounded; the last is K)."""
    alpha = (n_keep / n_full) ** (1.0 / n_stages)
    return tuple(max(n_keep, round(n_full * alpha ** (i + 1))) for i in range(n_stages - 1)) + (n_keep,)


def make_schedule(layers, budgets, *, n_keep: int, n_full: int, n_layers: int,
                  names: tuple[str, str] = ("layers", "budgets")) -> Schedule:
    """A checked schedule; `names` are the options the layers and budgets came from (errors name them).
    budgets=None: geometric_budgets."""
    name = names[0]
    layers = tuple(int(layer) for layer in layers)
    if not layers:
        raise InputError(f"{name}: expected at least one decoder layer to prune after, got none")
    last = n_layers - 2  # pruning after the last layer would drop nothing: no layer comes after it
    bad = [layer for layer in layers if not 0 <= layer <= last]
    if bad:
        raise InputError(f"{name}={_joined(layers)}: layer {bad[0]} is out of range; this model has {n_layers} "
                         f"decoder layers, so prune after layer 0..{last}")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise InputError(f"{name}={_joined(layers)}: expected ascending layers, each once")
    budgets = geometric_budgets(n_keep, n_full, len(layers)) if budgets is None else tuple(int(b) for b in budgets)
    _check_budgets(names[1], layers, budgets, n_keep, n_full)
    return Schedule(layers, budgets)


def _check_budgets(name: str, layers: tuple, budgets: tuple, n_keep: int, n_full: int) -> None:
    shown = _joined(budgets)
    if len(budgets) != len(layers):
        raise InputError(f"{name}={shown}: {len(layers)} stages but {len(budgets)} budgets; give one per stage")
    grown = next((i for i in range(1, len(budgets)) if budgets[i] > budgets[i - 1]), None)
    if grown is not None:
        raise InputError(f"{name}={shown}: stage {grown + 1} keeps {budgets[grown]} image tokens, more than the "
                         f"{budgets[grown - 1]} stage {grown} left; budgets must not grow from stage to stage")
    if budgets[0] > n_full or budgets[-1] < 1:
        raise InputError(f"{name}={shown}: expected 1..{n_full} image tokens per stage")
    if budgets[-1] != n_keep:
        raise InputError(f"{name}={shown}: the last stage keeps {budgets[-1]} tokens but the budget (--tokens) is "
                         f"{n_keep}; make them agree")


def _joined(values) -> str:
    return ",".join(map(str, values))
