"""MettaScope replays named by mission and seed, and a log line that names that file.

mettagrid's ``ReplayLogWriter`` names each replay after a random uuid and logs
``Wrote replay for episode <uuid> to file://<dir>/<uuid>.json.z`` at INFO. Renaming the file afterwards
would leave that line pointing at a file that no longer exists. ``NamedReplayWriter`` gives the episode
its final name before the file is written, so the file and mettagrid's own log line agree.
"""

from __future__ import annotations

from mettagrid.simulator.replay_log_writer import ReplayLogWriter


class NamedReplayWriter(ReplayLogWriter):
    """A ``ReplayLogWriter`` that writes ``<replay_dir>/<name>.json.z`` instead of ``<uuid>.json.z``.

    Meant for one episode per writer (a later episode would overwrite the file).
    """

    def __init__(self, replay_dir: str, name: str) -> None:
        if not name or "/" in name:
            raise ValueError(f"NamedReplayWriter: name must be a plain file stem, got {name!r}")
        super().__init__(replay_dir)
        self._name = name

    def on_episode_start(self) -> None:
        super().on_episode_start()
        # mettagrid builds the file name and the log line from the episode id when the episode ends.
        self.episodes[self._name] = self.episodes.pop(self._episode_id)
        self._episode_id = self._name
