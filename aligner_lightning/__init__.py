"""aligner-lightning: PuffeRL-exact PPO/V-trace on the CoGames aligner mission, as a Lightning codebase."""
