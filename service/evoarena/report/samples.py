"""The generator samples of `evoarena report`: the best generator of each round (or fight), drawn
from its weights in the artifact store by samples.draw, the same picture `evoarena sample` draws.

The result store holds each generator's genome; its weights are checkpoints in the artifact store
($EVOARENA_ARTIFACTS). A page built where the artifact store cannot be read says so in place of
each picture, and the rest of the page stands.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from evoarena.report.plots import evenly_spaced

if TYPE_CHECKING:
    from evoarena.cli.export import Chosen
    from evoarena.settings import Settings

MAX_SAMPLE_PICTURES = 8  # rounds (or fights) whose best generator's samples are drawn, evenly spaced


def best_generators(spec, steps: list[dict]) -> dict[int, Chosen]:
    """The best generator of each round's match (keyed by round, from 1), or of each fight (keyed by fights done)."""
    from evoarena.cli.export import best_generator_of

    out = {}
    for state in steps:
        chosen = best_generator_of(spec, state["generation"], state)
        if chosen is not None:
            out[state["done"] if spec.arena.mode == "async" else state["round"] + 1] = chosen
    return out


def sample_section(page, spec, steps: list[dict], settings: Settings | None, store_url: str) -> None:
    """Samples of the best generator of up to MAX_SAMPLE_PICTURES rounds (or fights), evenly spaced, drawn
    from its weights by samples.draw; a picture that cannot be drawn says why in its place."""
    from evoarena.cli.export import build
    from evoarena.cli.samples import draw

    section, unit = "Generator samples", "fight" if spec.arena.mode == "async" else "round"
    best = best_generators(spec, steps)
    shown = evenly_spaced(list(best), MAX_SAMPLE_PICTURES)
    page.text(f"The best generator of each {unit} drawn from its weights (the artifact store) with latents of seed 0: "
              "what `evoarena sample NAME --genome GENOME_ID` draws. "
              + ("Circles: each mode's 3-std disc; a sample inside one is high quality." if _mixture(spec) else ""),
              section=section)
    if settings is None:
        page.note("Not drawn: this page was built without the artifact store, where the generators' weights are.",
                  section=section)
        return
    for x in shown:
        chosen = best[x]
        title = f"samples, {unit} {x}"
        fitness = "" if chosen.fitness is None else f", fitness {chosen.fitness:.3g}"
        caption = f"{unit} {x}: generator {chosen.member} (genome {chosen.genome['id']}){fitness}"
        try:
            arch, flat = build(chosen, spec, store_url, settings)
        except Exception as exc:  # an unreachable or incomplete artifact store: the page stands without it
            page.note(f"{title} not drawn: the weights of {chosen.member} could not be built from the artifact store "
                      f"{settings.artifacts} ({type(exc).__name__}: {exc}).", section=section)
            continue
        picture, _, _ = draw(spec, chosen.member, chosen.genome["id"], arch, flat)
        page.image(title, picture, caption, section=section)
    if len(shown) < len(best):
        page.note(f"{len(shown)} of the {len(best)} {unit}s are drawn, evenly spaced.", section=section)


def _mixture(spec) -> bool:
    from evoarena.problems.gan_data import MIXTURES

    return spec.problem.data.kind in MIXTURES
