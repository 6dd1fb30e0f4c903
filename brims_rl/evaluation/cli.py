"""`brims-rl evaluate RUN_DIR|CHECKPOINT`: full-game scores of a checkpoint, optionally with a video of one game.

What is evaluated
    The agent is rebuilt from the checkpoint alone: its stored config (Config.to_dict() at training time) says which
    env, protocol, encoder and core to build, and its "model" holds the weights. Nothing else in the run folder is
    read. Games are played under the evaluation protocol (`make_vec_env(..., training=False)`): the training
    preprocessing, but no episodic life and no reward clipping, so a score is the unclipped score of a whole game
    (until game over or the time limit, env.max_episode_steps agent steps; `--max-episode-steps` lowers it).
    The core's state is carried from step to step and reset at the first observation of every game (the `first`
    flags are passed as episode_starts, as the training rollout does).

Lives (evaluation as trained)
    When the run trained with episodic life (Atari), each life loss is handled as the training env did: the next
    step starts the new life (FIRE where fire reset is on and the game has FIRE; envpool also runs its no-ops) and
    the core's state resets at the new life's first observation. Scores are still whole games. `--no-life-reset`
    plays the lives of a game as one continuous episode instead (no reset, no FIRE: in games such as Breakout a
    policy that never presses FIRE then sits out the game until the time limit).

Which episodes count (not biased toward short games)
    E = min(--episodes N, --num-envs) envs are run, env i seeded with seed + i. Env i has a quota of
    N // E + (1 if i < N % E else 0) games and only its FIRST quota games count; games it plays after that are
    discarded. The set of counted games is therefore fixed by (seed, N, E) and the policy, never by which games
    happen to end first (stopping at "the first N games to finish" over-samples short ones). Episodes are numbered
    env by env: env 0's games first, in the order it played them, then env 1's, ...; episode 1 is env 0's first
    game, the one `--video` records.

Actions and seeds
    `--greedy` takes the most likely action (the argmax of the logits; per component for MultiDiscrete; the mean
    for Box actions, see docs/spaces.md); otherwise actions are sampled on the CPU from a torch.Generator seeded with
    the seed, so a sampled evaluation is repeatable too. Box actions reach the env clipped to its bounds. The default seed is the run's training seed +
    1000 (away from the seeds its training envs used). Envs are seeded from the seed, so `--greedy --seed S` gives
    identical scores every time.

Output
    Each episode's score and length, then mean ± std (population std, ddof=0) on stdout; a progress line on stderr
    for long evaluations; `eval.json` (schema below) in the run folder: the folder holding `checkpoints/` when the
    checkpoint lies in a folder called `checkpoints`, else (or when the run folder is not writable) next to the
    checkpoint. It is written atomically and replaces an older eval.json there.

eval.json
    format "brims-rl-eval/1"; checkpoint (absolute path), global_step, updates, core, agent; scores, lengths (lists,
    episode order as above); episodes (list of {episode, env, game, score, length}); mean, std, std_ddof (0);
    settings {episodes, num_envs, greedy, seed, device, life_reset (true: lives handled as in training, see Lives),
    env {id, kind, protocol "evaluation", and for Atari the backend and every preprocessing option with episodic_life
    (per-life scores) and reward_clip false}}; video (null, or {path, frames, episode 1, matched, mismatch});
    finished_at (local ISO time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from brims_rl import checkpoint
from brims_rl.atomic import write_text_atomic
from brims_rl.config import EnvConfig
from brims_rl.environments import EnvSpec, resolve_env
from brims_rl.errors import UserError, describe_os_error
from brims_rl.evaluation import module_views
from brims_rl.evaluation.play import SEED_OFFSET, check_fits, evaluate_policy, make_evaluation_env
from brims_rl.policy import policy_from_checkpoint
from brims_rl.progress import LiveLine, format_duration
from brims_rl.run_folder import RunFolder, run_of_checkpoint
from brims_rl.runtime import count, resolve_device

FORMAT = "brims-rl-eval/1"
DEFAULT_EPISODES = 10
DEFAULT_NUM_ENVS = 8


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="full-game scores of a checkpoint (optionally a video)",
        description="Play full games (no episodic life, unclipped rewards) with a checkpoint's policy; print each "
                    "score and mean ± std (population std); write eval.json in the run folder.")
    p.add_argument("--env", metavar="ENV",
                   help="play this env instead of the run's, with the run's env settings (transfer: it must have the "
                        "run's observation and action spaces); writes eval__<env>.json instead of eval.json")
    p.add_argument("path", type=Path, metavar="RUN_DIR|CHECKPOINT",
                   help="a run folder (its checkpoints/latest.pt is used) or a checkpoint file")
    p.add_argument("--episodes", type=count, default=DEFAULT_EPISODES,
                   help=f"games to count (default {DEFAULT_EPISODES}); env i counts only its first games, see docs")
    p.add_argument("--greedy", action="store_true", help="take the most likely action instead of sampling")
    p.add_argument("--seed", type=count, help=f"env seed (env i gets seed + i) and sampling seed "
                                              f"(default: the run's seed + {SEED_OFFSET})")
    p.add_argument("--video", type=Path, metavar="PATH.mp4", help="write the first episode (env 0's first game) "
                                                                  "as an RGB mp4")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--num-envs", type=count, help=f"parallel envs (default {DEFAULT_NUM_ENVS}; never more than "
                                                  "--episodes)")
    p.add_argument("--no-life-reset", action="store_true",
                   help="play a game's lives as one episode: no core reset and no FIRE at a life loss (default, "
                        "when the run trained with episodic life: handle each life loss as training did)")
    p.add_argument("--max-episode-steps", type=count, metavar="STEPS",
                   help="Atari only: end games at this many agent steps (time limit, recorded in eval.json); "
                        "default: the run's env.max_episode_steps")
    p.set_defaults(func=run)


def output_folder(checkpoint_file: Path) -> Path:
    """Where eval.json goes: the run folder (RUN/checkpoints/x.pt -> RUN) if writable, else next to the checkpoint."""
    run = run_of_checkpoint(checkpoint_file)
    if run is not None and os.access(run.path, os.W_OK):
        return run.path
    return Path(checkpoint_file).resolve().parent


class EpisodeProgress:
    """Episodes done, steps, steps/s, mean score and elapsed time (short evaluations print nothing)."""

    def __init__(self, total: int, stream=None, interval_s: float = 10.0) -> None:
        self.total, self.line = total, LiveLine(stream, interval_s)
        self.start = time.monotonic()
        self.done, self.steps, self.scores = 0, 0, []

    def step(self, num_envs: int) -> None:
        self.steps += num_envs
        if self.line.due():
            elapsed = time.monotonic() - self.start
            mean = f"{np.mean(self.scores):.1f}" if self.scores else "-"
            self.line.write(f"episodes {self.done}/{self.total} | {self.steps:,} steps | "
                            f"{self.steps / max(elapsed, 1e-9):,.0f} steps/s | mean score {mean} | "
                            f"{format_duration(elapsed)}")

    def episode(self, score: float) -> None:
        self.done += 1
        self.scores.append(score)

    def close(self) -> None:
        self.line.close()


def _number(x: float) -> str:
    """A score as printed: integers without a decimal point, other values to two decimals (eval.json keeps them
    exact)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 2**53 else f"{float(x):.2f}"


def _env_settings(env_cfg: EnvConfig, spec: EnvSpec) -> dict[str, Any]:
    kind = spec.kind
    if not spec.is_atari:
        return {"id": env_cfg.id, "kind": kind, "protocol": "evaluation"}
    data = dataclasses.asdict(env_cfg)
    for key in ("num_envs", "threads"):
        data.pop(key)
    data.update(kind=kind, protocol="evaluation", episodic_life=False, reward_clip=False)
    return data


# ---- the command -----------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    if args.episodes < 1:
        raise UserError(f"--episodes must be at least 1, got {args.episodes}")
    if args.num_envs is not None and args.num_envs < 1:
        raise UserError(f"--num-envs must be at least 1, got {args.num_envs}")
    if args.max_episode_steps is not None and args.max_episode_steps < 1:
        raise UserError(f"--max-episode-steps must be at least 1, got {args.max_episode_steps}")
    video_path = None
    if args.video is not None:
        from brims_rl.evaluation.video import check_video_path

        video_path = check_video_path(args.video)
    device = resolve_device(args.device)

    file, payload, config = checkpoint.load_checkpoint(args.path)
    played = config.env if args.env is None else dataclasses.replace(config.env, id=args.env)
    spec = resolve_env(played.id)
    if args.max_episode_steps is not None and not spec.is_atari:
        raise UserError("--max-episode-steps applies to Atari games only (gymnasium envs keep their own limit)")
    seed = args.seed if args.seed is not None else config.seed + SEED_OFFSET
    num_envs = min(args.episodes, args.num_envs if args.num_envs is not None else DEFAULT_NUM_ENVS)
    folder = output_folder(file)

    made = make_evaluation_env(played, num_envs, seed, life_reset=not args.no_life_reset,
                               max_episode_steps=args.max_episode_steps)
    env, env_cfg, life_reset = made.env, made.settings, made.life_reset
    recorder = None
    modules = None  # RIMs/BRIMs: env 0's first game's module trace, for modules.png and the video's panel
    progress = EpisodeProgress(args.episodes)
    try:
        policy = policy_from_checkpoint(file, payload, config, device,
                                        spaces=(env.single_observation_space, env.single_action_space))
        check_fits(policy, env, played.id)
        modules = module_views.FirstGameTrace.for_core(policy.agent.core)
        if video_path is not None:
            from brims_rl.evaluation.video import Recorder

            panel = module_views.ModulePanel(modules.module_counts) if modules else None
            recorder = Recorder(env_cfg, seed, video_path, life_reset=life_reset, panel=panel)
        where = f"{spec.name}, {env_cfg.backend}" if spec.is_atari else spec.name
        if spec.is_atari:
            where += f", life reset {'on' if life_reset else 'off'}"
        print(f"brims-rl: evaluating {file} (step {policy.step:,}; {where}; core {config.core.name}) | "
              f"{args.episodes} episodes on {num_envs} envs | {'greedy' if args.greedy else 'sampled'} | "
              f"seed {seed} | device {device}", flush=True)

        def on_step(actions: np.ndarray, step: Any) -> None:
            progress.step(num_envs)
            env0_over = any(i == 0 for i, _, _ in step.episodes)
            active = modules.step(env0_over) if modules is not None else None
            if recorder is not None and not recorder.done:
                recorder.step(actions[0], float(step.reward[0]), env0_over, modules=active)

        result = evaluate_policy(policy, env, args.episodes, args.greedy, seed, on_step=on_step,
                                 on_episode=lambda i, score, length: progress.episode(score))
        if recorder is not None:
            recorder.finish()
    except KeyboardInterrupt:
        if recorder is not None:
            recorder.abort()
        print("brims-rl: evaluation interrupted; nothing written", file=sys.stderr)
        return 130
    except BaseException:
        if recorder is not None:
            recorder.abort()
        raise
    finally:
        progress.close()
        env.close()

    episodes = [dataclasses.asdict(e) for e in result.episodes]
    for record in episodes:
        print(f"episode {record['episode']}: score {_number(record['score'])} | length {record['length']} steps | "
              f"env {record['env']}, game {record['game']}")
    print(f"score {result.mean:.2f} ± {result.std:.2f} (mean ± population std over {len(episodes)} episodes)")

    video = None
    if recorder is not None:
        video = {"path": str(video_path.resolve()), "frames": recorder.frames, "episode": 1,
                 "matched": recorder.matched, "mismatch": recorder.mismatch}
        length = episodes[0]["length"]
        lives = recorder.frames - 1 - length  # frames of the steps that started a new life (not agent steps)
        print(f"video: {video_path} ({recorder.frames} frames: the first, one per step of episode 1's {length}"
              + (f", and one per life it started after a life loss ({lives})" if lives else "") + ")")
        if not recorder.matched:
            print(f"brims-rl: warning: the video's RGB env did not replay episode 1 exactly ({recorder.mismatch})",
                  file=sys.stderr)

    record = {
        "format": FORMAT,
        "checkpoint": str(file.resolve()),
        "global_step": policy.step,
        "updates": int(payload.get("updates", 0)),
        "core": config.core.name,
        "agent": config.agent,
        "scores": result.scores,
        "lengths": result.lengths,
        "episodes": episodes,
        "mean": result.mean,
        "std": result.std,
        "std_ddof": 0,
        "settings": {"episodes": args.episodes, "num_envs": num_envs, "greedy": bool(args.greedy), "seed": seed,
                     "device": str(device), "life_reset": life_reset, "env": _env_settings(env_cfg, spec)},
        "video": video,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    written = write_eval(record, [folder, file.resolve().parent], None if args.env is None else played.id)
    print(f"wrote {written}")
    if modules is not None and args.env is None:
        write_module_views(modules, written.parent, config.core.name, episodes[0])
    return 0


def write_module_views(modules: Any, folder: Path, core: str, episode: dict[str, Any]) -> None:
    """modules.png beside eval.json: the module trace of episode 1 (env 0's first game)."""
    modules.close()
    active, to_higher = modules.arrays()
    path = RunFolder(folder).modules_file
    module_views.plot_modules(active, to_higher, path, f"{core}: modules in episode 1 (env 0's first game; "
                                          f"score {_number(episode['score'])}, {modules.steps} steps)")
    print(f"wrote {path}")


def write_eval(record: dict[str, Any], folders: list[Path], other_env: str | None = None) -> Path:
    """Write eval.json (eval__<env>.json for `--env`) atomically into the first folder that takes it."""
    text = json.dumps(record, indent=2) + "\n"
    errors: list[OSError] = []
    for folder in dict.fromkeys(folders):
        path = RunFolder(folder).eval_file if other_env is None else RunFolder(folder).transfer_eval_file(other_env)
        try:
            write_text_atomic(path, text)
            return path
        except OSError as exc:
            errors.append(exc)
    if len(errors) == 1:
        raise errors[0]
    raise OSError(errors[-1].errno, "; ".join(describe_os_error(e) for e in errors))  # every place failed
