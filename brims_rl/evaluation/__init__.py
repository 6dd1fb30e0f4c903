"""`brims-rl evaluate`: full-game scores of a checkpoint, optionally with a video and module views.

One module per job:
    cli.py           the command: arguments, the evaluation run, eval.json
    play.py          playing games with an agent: per-env quotas of counted games, the step loop
    video.py         the RGB twin env and the mp4 of episode 1
    module_views.py  RIMs/BRIMs module views: modules.png and the video's side panel (from the core's module trace)
"""

from brims_rl.evaluation.cli import add_parser, run

__all__ = ["add_parser", "run"]
