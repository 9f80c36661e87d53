"""Atari games as Such et al. 2017 ("Deep Neuroevolution") played them: fitness = episode return.

The emulator is ale-py (it ships the ROMs), wrapped as DQN (Mnih et al. 2015) preprocessed it,
with gymnasium's wrappers:

    gym.make("ALE/<game>-v5", frameskip=1, repeat_action_probability=<sticky>,
             max_num_frames_per_episode=<max_episode_frames>)       the episode cap, in emulator frames
    AtariPreprocessing(noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
        a random number of no-ops (1..noop_max) after reset; each action repeated on 4 emulator
        frames, the observation the max of the last two (flicker); grey, resized to 84x84
    FrameStackObservation(4)                                        the last 4 observations: (4, 84, 84) uint8

The network is the paper's (DQN's): conv 32 8x8 stride 4, conv 64 4x4 stride 2, conv 64 3x3
stride 1, dense 512, one output per action, ReLUs between (`nets.convnet` on a (4, 84, 84)
input; the spec's `network` section, whose default is exactly this). Inputs are scaled to
[0, 1]; the action is the argmax of the outputs (a deterministic policy, as in the paper).

Frames are counted as the paper counts them: every emulator frame, the skipped ones and the
no-ops included (`ale.getEpisodeFrameNumber()` at the end of the episode).

Determinism: an episode is a pure function of (genome, episode seed). The seed seeds the env's
reset, which seeds both the emulator and the no-op count; with `sticky = 0` nothing else is
random. A task's episode seeds are derived from (problem.episode_seed, generation, genome id,
episode index) by `episode_seeds`, so every worker plays the same episodes for the same task, and
each result records the seeds it played.

Vectorised play: `play` steps every episode of every network it is given in lockstep, and runs
ONE forward pass per step for all of them: one network's episodes as one batch, several networks'
through `batched.runner(..., own=True)` (each on its own episodes' observations, one grouped
convolution or batched matrix product per layer; bench/batched.py's atari rows time that pass),
unless this machine found such a group faster played one network after another
(`batched.plays_apart`: in lockstep every step reads every network's weights again).
"""

from __future__ import annotations

import atexit
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from evoarena.encoding import batched, nets
from evoarena.spec.experiment import ale_games

FRAME_STACK = 4
SCREEN = 84


def make_env(problem: dict):
    """One preprocessed environment of a `problem` spec (as a dict)."""
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

    gym.register_envs(ale_py)
    if problem["game"] not in ale_games():
        raise ValueError(f"problem.game = {problem['game']!r}: not a game of ale-py; accepted: {', '.join(ale_games())}")
    env = gym.make(f"ALE/{problem['game']}-v5", frameskip=1, repeat_action_probability=problem["sticky"],
                   max_num_frames_per_episode=problem["max_episode_frames"])
    env = AtariPreprocessing(env, noop_max=problem["noop_max"], frame_skip=problem["frame_skip"],
                             screen_size=SCREEN, grayscale_obs=True)
    return FrameStackObservation(env, FRAME_STACK)


@lru_cache(maxsize=64)
def actions_of(game: str) -> int:
    """How many actions `game`'s minimal action set has (the network's outputs)."""
    env = make_env({"game": game, "sticky": 0.0, "max_episode_frames": 0, "noop_max": 0, "frame_skip": 4})
    try:
        return int(env.action_space.n)
    finally:
        env.close()


def architecture(problem: dict, network: dict) -> dict:
    """The paper's network for this game: the spec's convs and hidden layers on a (4, 84, 84) input."""
    return nets.convnet([FRAME_STACK, SCREEN, SCREEN], network["convs"], network["hidden"], actions_of(problem["game"]))


@dataclass
class AtariData:
    """A worker's environments for one problem, made once and reset with a seed per episode."""

    problem: dict
    device: str = "cpu"
    envs: list = field(default_factory=list)

    def take(self, n: int) -> list:
        while len(self.envs) < n:
            self.envs.append(make_env(self.problem))
        return self.envs[:n]

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs.clear()  # the emulators go now, not in the interpreter's teardown (where ale-py complains)


def make_data(problem: dict, device: torch.device | str = "cpu") -> AtariData:
    data = AtariData(problem, str(device))
    atexit.register(data.close)
    return data


def episode_seeds(problem: dict, generation: int, genome_id: str, count: int) -> list[int]:
    """The seeds of a task's `count` episodes: the same on every worker, different per generation
    and genome, and the first `k` the same whatever `count` is."""
    genome = int.from_bytes(hashlib.sha256(genome_id.encode()).digest()[:8], "little")
    words = np.random.SeedSequence([problem["episode_seed"], generation, genome]).generate_state(count, np.uint64)
    return [int(w % (2**31 - 1)) for w in words]


@dataclass(frozen=True)
class Episode:
    """What one episode gave: its return, and what it cost."""

    seed: int
    ret: float
    frames: int  # emulator frames, skipped frames and no-ops included
    steps: int  # agent decisions (one per `frame_skip` frames)
    noops: int  # no-op frames after the reset


@torch.no_grad()
def play(arch: dict, flats: list[torch.Tensor], seeds: list[list[int]], data: AtariData) -> list[list[Episode]]:
    """Play network i on the episodes seeds[i], every episode of every network in lockstep, one
    forward pass per step for all of them (or, where batched.plays_apart says so, each network's
    episodes in lockstep, one network after another); return each network's episodes in order."""
    jobs = [(i, s) for i, own in enumerate(seeds) for s in own]
    envs = data.take(len(jobs))
    obs, noops = [], []
    for env, (_, seed) in zip(envs, jobs):
        first, info = env.reset(seed=seed)
        obs.append(first)
        noops.append(int(info["episode_frame_number"]))
    if len(flats) > 1:
        x = torch.from_numpy(np.stack(obs)).to(flats[0].device).float().div_(255.0)
        if batched.plays_apart(arch, torch.stack(flats), _by_network(x, [i for i, _ in jobs])[0]):
            # this machine plays such a group faster one network after another (batched.PLAYS)
            return [play(arch, [flat], [own], data)[0] for flat, own in zip(flats, seeds)]
    returns, steps = [0.0] * len(jobs), [0] * len(jobs)
    live = list(range(len(jobs)))
    done: dict[int, Episode] = {}
    runners: dict[tuple[int, ...], Callable] = {}  # the live networks' pass, their kernels laid out once per set
    while live:
        actions = _act(arch, flats, [jobs[j][0] for j in live], np.stack([obs[j] for j in live]), runners)
        still = []
        for j, action in zip(live, actions):
            obs[j], reward, terminated, truncated, info = envs[j].step(int(action))
            returns[j] += float(reward)
            steps[j] += 1
            if terminated or truncated:
                done[j] = Episode(jobs[j][1], returns[j], int(info["episode_frame_number"]), steps[j], noops[j])
            else:
                still.append(j)
        live = still
    out: list[list[Episode]] = [[] for _ in flats]
    for j, (i, _) in enumerate(jobs):
        out[i].append(done[j])
    return out


def _act(arch: dict, flats: list[torch.Tensor], owner: list[int], obs: np.ndarray,
         runners: dict[tuple[int, ...], Callable]) -> list[int]:
    """The greedy actions of the live episodes (obs: (L, 4, 84, 84) uint8; owner[k]: whose network)."""
    x = torch.from_numpy(obs).to(flats[0].device).float().div_(255.0)
    xs, rows = _by_network(x, owner)
    key = tuple(rows)
    if key not in runners:
        runners.clear()
        runners[key] = batched.runner(arch, torch.stack([flats[i] for i in rows]), own=True)
    chosen = runners[key](xs).argmax(2)  # (networks, width)
    actions = [0] * len(owner)
    for g, r in enumerate(rows.values()):
        for w, k in enumerate(r):
            actions[k] = int(chosen[g, w])
    return actions


def _by_network(x: torch.Tensor, owner: list[int]) -> tuple[torch.Tensor, dict[int, list[int]]]:
    """The rows of `x` grouped by network, (networks, width, ...), each network's rows padded to the
    widest by repeating its last (so that a pass can stack them), and which rows each network has."""
    rows = {i: [k for k, o in enumerate(owner) if o == i] for i in sorted(set(owner))}
    width = max(len(r) for r in rows.values())
    index = torch.tensor([r + [r[-1]] * (width - len(r)) for r in rows.values()], device=x.device)
    return x[index], rows



def metrics_of(episodes: list[Episode]) -> dict:
    """A task's result: fitness = the mean return over its episodes, and what they cost."""
    returns = [e.ret for e in episodes]
    return {"fitness": float(np.mean(returns)), "returns": returns, "episode_seeds": [e.seed for e in episodes],
            "frames": sum(e.frames for e in episodes), "steps": sum(e.steps for e in episodes),
            "noops": [e.noops for e in episodes]}


def task_seeds(task: dict) -> list[int]:
    """The episode seeds of an evaluate task: `task["episodes"]` of them (the elite candidates'
    re-evaluation), else the problem's `episodes`."""
    problem = task["problem"]
    count = task.get("episodes", problem["episodes"])
    return episode_seeds(problem, task["generation"], task["genome"]["id"], count)


def evaluate_task(arch: dict, flat: torch.Tensor, data: AtariData, task: dict) -> dict:
    """Fitness and metrics of one network on its task's episodes (all of them in lockstep)."""
    return metrics_of(play(arch, [flat], [task_seeds(task)], data)[0])


def evaluate_tasks(arch: dict, flats: list[torch.Tensor], data: AtariData, tasks: list[dict]) -> list[dict]:
    """`evaluate_task` for several networks of one architecture at once: one forward pass per step
    for every episode of every network (a sibling group, batched.py)."""
    return [metrics_of(e) for e in play(arch, flats, [task_seeds(t) for t in tasks], data)]
