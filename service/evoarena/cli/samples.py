"""`evoarena sample NAME [--genome ID | --mixture] --out FILE.png`: what an arena's generator, or its
mixture of generators, draws, as a picture.

The generator is the one `evoarena export` picks (export.choose: the best generator of the last
match, or `--genome`), built as a worker builds it. Its `n` samples come from latents drawn by a
torch.Generator seeded with `--seed`, so the same command draws the same picture.

- Images (digits, a user's npz): a grid of `n` samples (default 64), `ceil(sqrt(n))` to a row,
  each pixel drawn `scale` x `scale` screen pixels (default 4) with 2 grey pixels between samples.
  Generators end in tanh, so values [-1, 1] are shown black to white. An 8x8 digit at scale 4 is
  a 32-pixel tile: 64 of them make a 274 x 274 PNG.
- Mixtures (ring, grid): a 600 x 600 scatter of `n` samples (default 2,500, as many as the quality
  metrics take) over the mixture's mode centres, each with its 3-std circle (a sample inside one
  is high quality, gan_metrics.py); the title names the generator and its genome, and gives the
  modes covered, the high-quality share and the reverse KL of these very samples.

`--mixture`: the last match's mixture of generators (export.choose_mixture: the members of weight
> 0, weights renormalised over them), drawn by `mixture_samples`, whose rule
`scripts/sample_mixture.py` follows on an exported mixture with only torch and safetensors, so the
same seed gives the same samples; the title says "mixture of K generators" and gives the weights.

`draw` makes the picture; `evoarena report` embeds the same pictures (one per round's best
generator), so a generator drawn by either command with the same seed gives the same pixels.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING

from evoarena.cli.status import BadInput, open_experiment, usage_errors

if TYPE_CHECKING:
    import numpy as np
    import torch

    from evoarena.settings import Settings

GAP = 2  # grey pixels between the tiles of a grid (and around it)
SCATTER_PX = 600  # side of a mixture's scatter plot, in pixels (6 inches at 100 dpi)


def image_grid(samples: torch.Tensor, scale: int = 4) -> np.ndarray:
    """[N, C, H, W] samples in [-1, 1] as one [rows, cols] (C = 1) or [rows, cols, 3] image in [0, 1]."""
    import numpy as np

    x = ((samples.detach().cpu().float().clamp(-1, 1) + 1) / 2).numpy()
    n, channels, h, w = x.shape
    x = x[:, :3] if channels >= 3 else x[:, :1]
    x = np.repeat(np.repeat(x, scale, axis=2), scale, axis=3).transpose(0, 2, 3, 1)  # [N, H*s, W*s, C]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    th, tw = h * scale, w * scale
    grid = np.full((rows * (th + GAP) + GAP, cols * (tw + GAP) + GAP, x.shape[3]), 0.5, dtype=np.float32)
    for i, tile in enumerate(x):
        r, c = divmod(i, cols)
        top, left = GAP + r * (th + GAP), GAP + c * (tw + GAP)
        grid[top : top + th, left : left + tw] = tile
    return grid[..., 0] if grid.shape[2] == 1 else grid


def grid_png(grid: np.ndarray) -> bytes:
    """`grid` as a PNG, one pixel per array element (no colour map: each value is its grey level, to 8 bits)."""
    import io

    import numpy as np
    from matplotlib.image import imsave

    rgb = np.repeat(grid[..., None], 3, axis=2) if grid.ndim == 2 else grid
    buffer = io.BytesIO()
    imsave(buffer, rgb, format="png")
    return buffer.getvalue()


def scatter_png(samples: torch.Tensor, centres: torch.Tensor, std: float, title: str) -> bytes:
    """A SCATTER_PX-square PNG of 2-D samples over the mode centres and their 3-std circles."""
    import io

    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    xy, c = samples.detach().cpu().double().numpy(), centres.detach().cpu().double().numpy()
    fig = Figure(figsize=(SCATTER_PX / 100, SCATTER_PX / 100), dpi=100)
    ax = fig.add_subplot()
    for x, y in c:
        ax.add_patch(Circle((x, y), 3 * std, fill=False, color="tab:green", linewidth=1))
    ax.scatter(xy[:, 0], xy[:, 1], s=2, color="tab:blue", alpha=0.5, linewidths=0, label="generated")
    ax.scatter(c[:, 0], c[:, 1], s=30, marker="x", color="tab:red", label="mode centres")
    # the modes with a margin, widened to show samples that went astray (up to 4x the modes' extent)
    extent = abs(c).max() + 1.0
    reach = float(np.clip(np.quantile(abs(xy), 0.99), extent, 4 * extent)) if len(xy) else extent
    ax.set_xlim(-reach, reach)
    ax.set_ylim(-reach, reach)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    return buffer.getvalue()


def mixture_samples(members: list[tuple[dict, torch.Tensor]], weights: list[float], n: int,
                    seed: int) -> tuple[torch.Tensor, list[int]]:
    """(`n` samples of the mixture of generators `members` = [(arch, flat), ...] with `weights`, how many
    came from each member). The rule, which scripts/sample_mixture.py follows line for line:

    1. one generator: ``g = torch.Generator().manual_seed(seed)`` (on the CPU);
    2. the counts first: ``picks = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n,
       replacement=True, generator=g)``, ``counts = torch.bincount(picks, minlength=len(weights))``;
    3. then, for each member i in order with counts[i] > 0, its latents from the same generator,
       ``torch.randn(counts[i], *arch_i["input"], generator=g)``, through the member in chunks of
       4096 (gan.generate: gan.EVAL_CHUNK; only a ``bnorm`` layer sees the chunks);
    4. the samples are member 0's, then member 1's, ... (grouped by member, not shuffled).
    """
    import torch

    from evoarena.problems import gan

    if len(members) != len(weights) or n < 1:
        raise ValueError(f"{len(members)} members, {len(weights)} weights, n = {n}: need one weight a member and n >= 1")
    g = torch.Generator().manual_seed(seed)
    picks = torch.multinomial(torch.tensor(weights, dtype=torch.float64), n, replacement=True, generator=g)
    counts = torch.bincount(picks, minlength=len(weights)).tolist()
    parts = [gan.generate(arch, flat, count, g) for (arch, flat), count in zip(members, counts) if count > 0]
    return torch.cat(parts), counts


def draw(spec, member: str, genome_id: str, arch: dict, flat: torch.Tensor, n: int | None = None, seed: int = 0,
         scale: int = 4) -> tuple[bytes, int, str]:
    """(the PNG, how many samples, what they measure) of generator `member` (genome `genome_id`, built as
    `(arch, flat)`) of arena experiment `spec`: `n` samples (default: the quality metrics' count for a
    mixture, 64 images) from latents drawn by a torch.Generator seeded with `seed`. The measure is the
    mixture's quality_text; images have none ("")."""
    import torch

    from evoarena.problems import gan

    n = n or _default_n(spec)
    samples = gan.generate(arch, flat, n, torch.Generator().manual_seed(seed))
    return _picture(spec, samples, f"generator {member}\ngenome {genome_id}", scale)


def draw_mixture(spec, members: list[tuple[dict, torch.Tensor]], weights: list[float], source: str,
                 n: int | None = None, seed: int = 0, scale: int = 4) -> tuple[bytes, int, str]:
    """As `draw`, for the mixture of generators `members` with `weights` (of `source`, "round 3 match"),
    its samples drawn by `mixture_samples`."""
    n = n or _default_n(spec)
    samples, _ = mixture_samples(members, weights, n, seed)
    shares = " ".join(f"{w:.3f}" for w in weights)
    return _picture(spec, samples, f"mixture of {len(members)} generators ({source})\nweights {shares}", scale)


def _default_n(spec) -> int:
    from evoarena.problems import gan_data

    return spec.problem.metric_samples if spec.problem.data.kind in gan_data.MIXTURES else 64


def _picture(spec, samples: torch.Tensor, who: str, scale: int) -> tuple[bytes, int, str]:
    """(the PNG, how many samples, their quality_text): an image grid, or a scatter titled `who`."""
    from evoarena.evolve.population import quality_text
    from evoarena.problems import gan_data, gan_metrics

    data = spec.problem.data.model_dump(mode="json")
    n = len(samples)
    if data["kind"] not in gan_data.MIXTURES:
        return grid_png(image_grid(samples, scale)), n, ""
    centres = gan_data.mixture_centres(data)
    quality = quality_text(gan_metrics.mixture_quality(samples, centres, data["std"]))
    title = f"{spec.name}: {who}\n{n} samples: {quality}"
    return scatter_png(samples, centres, data["std"], title), n, quality


# --- the command --------------------------------------------------------------------------------


def add_parser(subparsers) -> None:
    """`evoarena sample NAME [--genome ID | --mixture] --out FILE.png`."""
    parser = subparsers.add_parser("sample", help="an arena generator's samples as a PNG (a grid, or a scatter)")
    parser.add_argument("name", help="experiment name of an arena run")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--genome", help="a generator's member id or genome id instead of the best generator")
    which.add_argument("--mixture", action="store_true",
                       help="the last match's mixture of generators instead of the best generator")
    parser.add_argument("--out", required=True, help="the PNG file to write")
    parser.add_argument("-n", type=int, help="how many samples (default: 64 images, 2500 points)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latents (default 0)")
    parser.add_argument("--scale", type=int, default=4, help="images: screen pixels per sample pixel (default 4)")
    parser.add_argument("--store", help="result store URL (default: $EVOARENA_STORE or sqlite:///runs/evoarena.db)")


@usage_errors
def cmd_sample(args: argparse.Namespace, settings: Settings) -> int:
    from evoarena.cli.export import build, build_all, choose, choose_mixture

    store_url = args.store or settings.store
    store, _, spec = open_experiment(store_url, args.name)
    with store:
        if spec.algorithm != "arena":
            raise BadInput(f"experiment {spec.name!r} is a {spec.algorithm} run of the {spec.problem.kind} problem; "
                           "`sample` draws from the generators of an arena run")
        picked = choose_mixture(store, spec) if args.mixture else choose(store, spec, args.genome)
    if not args.mixture and picked.role != "generator":
        raise BadInput(f"{args.genome!r} is a {picked.role} of experiment {spec.name!r}; `sample` draws from a generator")
    for option, value in (("-n", args.n), ("--scale", args.scale)):
        if value is not None and value < 1:
            raise BadInput(f"{option} = {value}: must be at least 1")

    if args.mixture:
        members = build_all(picked.members, spec, store_url, settings)
        png, n, quality = draw_mixture(spec, members, picked.weights, picked.source, args.n, args.seed, args.scale)
        who = f"the mixture of {len(members)} generators of {picked.source}"
    else:
        arch, flat = build(picked, spec, store_url, settings)
        png, n, quality = draw(spec, picked.member, picked.genome["id"], arch, flat, args.n, args.seed, args.scale)
        who = f"generator {picked.member} ({picked.source})"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_bytes(png)
    print(f"{spec.name}: {n} samples of {who}{': ' + quality if quality else ''} -> {args.out}")
    return 0
