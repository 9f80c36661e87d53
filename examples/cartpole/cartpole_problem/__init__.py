"""CartPole as a problem of your own for evoarena: a small package outside evoarena, named in the
experiment file by import path (`problem: {kind: "cartpole_problem:CartPole", ...}`).

A network (an MLP from CartPole's 4 observations to its 2 actions) is scored by playing
`episodes` episodes of gymnasium's CartPole-v1, each from its own fixed seed, acting by the argmax
of its outputs; its fitness is the mean return (at most `max_steps` per episode). Every network of
a run plays the same episodes, so fitnesses compare networks, not luck.
"""

from __future__ import annotations

import gymnasium
import torch
from pydantic import BaseModel, ConfigDict, Field

from evoarena.encoding import nets


class CartPoleSpec(BaseModel):
    """The problem's own fields, checked when the experiment file is read."""

    model_config = ConfigDict(extra="forbid")

    episodes: int = Field(3, ge=1, le=100)
    max_steps: int = Field(500, ge=1, le=10_000)
    seed: int = Field(0, ge=0)


class CartPole:
    """evoarena's Problem (problems/__init__.py): make_data, architecture, evaluate."""

    Spec = CartPoleSpec

    @staticmethod
    def make_data(problem: dict, device) -> CartPoleSpec:
        return CartPoleSpec.model_validate(problem["fields"])

    @staticmethod
    def architecture(problem: dict, network: dict) -> dict:
        layers = [layer for width in network["hidden"] for layer in ({"type": "linear", "out": width}, {"type": "tanh"})]
        return {"input": [4], "layers": [*layers, {"type": "linear", "out": 2}]}

    @staticmethod
    def evaluate(arch: dict, flat: torch.Tensor, data: CartPoleSpec) -> dict:
        env = gymnasium.make("CartPole-v1", max_episode_steps=data.max_steps)
        returns = []
        with torch.no_grad():
            for episode in range(data.episodes):
                obs, _ = env.reset(seed=data.seed + episode)
                total, done = 0.0, False
                while not done:
                    action = nets.forward(arch, flat, torch.as_tensor(obs, dtype=torch.float32)[None]).argmax(1).item()
                    obs, reward, terminated, truncated, _ = env.step(action)
                    total, done = total + float(reward), terminated or truncated
                returns.append(total)
        env.close()
        return {"fitness": sum(returns) / len(returns), "returns": returns}


def random_policy_return(episodes: int = 30, seed: int = 0, max_steps: int = 500) -> float:
    """The mean return of a uniformly random policy on the same kind of episodes: the baseline."""
    env = gymnasium.make("CartPole-v1", max_episode_steps=max_steps)
    env.action_space.seed(seed)
    returns = []
    for episode in range(episodes):
        env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    return sum(returns) / len(returns)
