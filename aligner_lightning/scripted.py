"""A privileged scripted team for the aligner mission: a rules check, not a policy.

It reads the simulator's full state (every object, its position, tags and inventory) instead of the
agents' observations. Each agent navigates by BFS over the grid: it buys aligner gear at ``c:aligner``,
fills up on hearts at the hub, then bumps the nearest alignable neutral junction that no teammate has
claimed, and repeats. On the arena it aligns every junction of the map within a 1000-step episode.

Usage, step by step on a ``MettaGridPufferEnv`` (or anything with a ``current_simulation``)::

    env.reset()
    team = ScriptedTeam(env)
    while ...:
        env.step(team.actions())

``episodes.ScriptedActor`` wraps it for the episode runner.

Local mode (``local=True``) keeps the team's rules but limits what each agent knows about junctions to what it
has had in view this episode (the 121 cells of its observation window at every step so far): it aims only at
junctions it has seen, and with none left it walks to the nearest free cell it has not seen, along one shortest
path. It still reads from the simulator the walls (for paths), the hub and the aligner station, whether a seen
junction is still neutral and alignable, and its teammates' claims. It too aligns every junction of the arena
(maps 0-4: the same 53-62 as with full knowledge, the first at step 31-41 instead of 27-33), at 1-2x the cost
per step (``benchmarks/teacher_cost.py``). As a teacher (``data.teacher: scripted_local``) its choices rest on
what the student could have observed. ``memory=N`` shortens what a local agent knows to the cells it has had in
view in its last N steps (a junction it has chosen stays its goal while it is neutral and alignable), and
``claims=False`` hides the teammates' claims (agents may then head for the same junction):
``benchmarks/view_memory.py`` measures what each costs the team.

Cost. Per step the team reads only the agents from the simulator; it re-reads every object (junction
alignment, the team's network) only when the team's tag counts change, which is exactly when a junction is
aligned or lost (and every ``REFRESH_STEPS`` steps besides). Each walking-distance map (one per goal cell, from
the goal's neighbours) is searched once per episode with scipy's BFS and reused by every agent and step, also
to pick the nearest junction. ``reuse=False`` keeps the plain version (every object read and a Python BFS from
the agent at every choice of junction), which chooses the same actions; the tests hold the two equal and
``benchmarks/teacher_cost.py`` measures both.

Torch-free (pufferlib imports torch, so this module never imports the puffer env), so it runs
anywhere the missions run.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from mettagrid.simulator import Simulation
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from aligner_lightning.missions.aligner import ALIGN_HUB_RADIUS, ALIGN_NET_RADIUS, NET_TAG, TEAM_TAG

Cell = tuple[int, int]  # (row, col)
# Primary action names and the (row, col) step each one takes.
MOVES: dict[str, Cell] = {"move_north": (-1, 0), "move_south": (1, 0), "move_west": (0, -1), "move_east": (0, 1)}
STUCK_STEPS = 4  # after this many steps without progress, an agent takes a random step
REFRESH_STEPS = 100  # reuse mode: every object is re-read at least this often, whatever the tag counts say
# An agent's view: the cells of its 13 x 13 observation window within this squared distance, 121 cells, as many
# as the window holds (docs/mission.md, Observations).
VIEW_RADIUS2 = 37
VIEW_MASK = np.add.outer(np.arange(-6, 7) ** 2, np.arange(-6, 7) ** 2) <= VIEW_RADIUS2


class SimulationSource(Protocol):
    """What the team reads: ``MettaGridPufferEnv`` fits; its simulation changes at each auto-reset."""

    @property
    def current_simulation(self) -> Simulation: ...


@dataclass
class _AgentState:
    target: int | None = None  # object id of the junction this agent has claimed
    last_cell: Cell | None = None
    stuck: int = 0
    # Local mode: the cells this agent knows (had in view this episode, or within ``memory`` steps), and the
    # unseen cell it is walking to.
    seen: np.ndarray | None = None
    seen_at: np.ndarray | None = None  # with ``memory``: the step each cell was last in view
    explore: dict[str, int] | None = None
    explore_dist: np.ndarray | None = None  # along the path to ``explore`` (``_path_distances``)
    explored: bool = False  # every cell it can reach has been seen (for good only without ``memory``)


@dataclass
class _World:
    """One episode's static layout, rebuilt when the env starts a new simulation."""

    sim: Simulation
    blocked: np.ndarray  # True where walls and objects are (agents excluded)
    tag_ids: dict[str, int]
    dist_cache: dict[Cell, np.ndarray] = field(default_factory=dict)
    # Reuse mode: the free cells' 4-neighbour graph (scipy's BFS), the type names that are not agents, and the
    # non-agent state as last read (hub, station, neutral alignable junctions) with the tag counts it was read at.
    graph: csr_matrix | None = None
    non_agent_types: list[str] = field(default_factory=list)
    static: tuple[dict[str, Any], dict[str, Any], dict[int, dict[str, Any]]] | None = None
    read_key: tuple[int, int] | None = None
    read_step: int = -1


class ScriptedTeam:
    """Chooses one primary action per agent from the simulator's full state.

    ``actions()`` returns an int32 array of shape [num_agents] of primary action indices (noop and the
    four moves), suitable for ``env.step``. Call it once per step, after ``reset`` and after each step;
    it follows the env across auto-resets. ``reuse`` (the default) caches simulator reads and distance maps
    between steps (module docstring); ``False`` is the plain reference, same actions, ~10x the cost.
    After each call, ``idle[i]`` says that agent i had nothing to do (no unclaimed alignable junction left) and
    was given a noop, and ``moves[i]`` is a bitmask (bit ``a`` for action id ``a``) of the actions as good as
    the chosen one: every free move along a shortest path to the agent's goal (the chosen move takes the first
    of them in ``MOVES`` order), or the chosen action alone (a step into the goal, an unsticking step, a noop,
    a walk along the one path to an unseen cell).
    """

    def __init__(self, env: SimulationSource, seed: int = 0, reuse: bool = True, local: bool = False,
                 memory: int | None = None, claims: bool = True):
        if local and not reuse:
            raise ValueError("local=True needs reuse=True (it walks on the reused grid graph)")
        if memory is not None and (not local or memory < 1):
            raise ValueError(f"memory={memory}: needs local=True and memory >= 1 (steps a seen cell is remembered)")
        self._env = env
        self.reuse = reuse
        self.local = local
        self.memory = memory
        self.claims = claims
        self._rng = np.random.default_rng(seed)
        self.idle = np.zeros(0, dtype=bool)
        self.moves = np.zeros(0, dtype=np.int64)
        self._world: _World | None = None
        self._agents: list[_AgentState] = []
        names = env.current_simulation.action_names
        self._noop = names.index("noop")
        self._move_ids = {delta: names.index(name) for name, delta in MOVES.items()}

    def actions(self) -> np.ndarray:
        world = self._current_world()
        agents, (hub, station, neutral) = self._read(world)
        occupied = {(o["r"], o["c"]) for o in agents.values()}
        heart_cap = world.sim.config.game.agent.inventory.limits["heart"].max

        actions = np.full(len(agents), self._noop, dtype=np.int32)
        self.idle = np.zeros(len(agents), dtype=bool)
        self.moves = np.zeros(len(agents), dtype=np.int64)
        for agent_id in sorted(agents):
            agent, state = agents[agent_id], self._agents[agent_id]
            pos = (agent["r"], agent["c"])
            if self.local:
                _look(state, pos, world.blocked.shape, world.sim.current_step, self.memory)
            hearts = agent.get("inv:heart", 0)
            if state.target not in neutral:
                state.target = None
            if agent.get("inv:aligner", 0) == 0:
                goal = station
            elif hearts == 0 or (hearts < heart_cap and _adjacent(pos, (hub["r"], hub["c"]))):
                goal = hub
            else:
                claimed = {s.target for i, s in enumerate(self._agents) if i != agent_id} if self.claims else set()
                if state.target is None:
                    state.target = self._nearest(world, pos, [
                        j for j in neutral.values()
                        if j["id"] not in claimed and (not self.local or state.seen[j["r"], j["c"]])])
                goal = neutral.get(state.target) if state.target is not None else None
                if goal is None and self.local:
                    goal = self._explore(world, state, pos)
            dist = state.explore_dist if goal is state.explore and goal is not None else None
            actions[agent_id], self.moves[agent_id] = self._step_toward(world, state, pos, goal, occupied, dist)
            self.idle[agent_id] = goal is None
        return actions

    def _read(self, world: _World) -> tuple[dict[int, dict[str, Any]], tuple]:
        """The agents (by id), and the hub, the aligner station and the neutral alignable junctions (by id)."""
        if not self.reuse:
            return self._read_all(world)
        sim = world.sim
        index = sim._c_sim.tag_index()
        key = tuple(index.count_objects_with_tag(world.tag_ids[tag]) for tag in (NET_TAG, TEAM_TAG))
        if key != world.read_key or sim.current_step - world.read_step >= REFRESH_STEPS:
            agents, world.static = self._read_all(world)
            world.read_key, world.read_step = key, sim.current_step
            return agents, world.static
        objects = sim.grid_objects(ignore_types=world.non_agent_types)
        return {o["agent_id"]: o for o in objects.values() if o.get("agent_id") is not None}, world.static

    @staticmethod
    def _read_all(world: _World) -> tuple[dict[int, dict[str, Any]], tuple]:
        objects = world.sim.grid_objects(ignore_types=["wall"])
        agents = {o["agent_id"]: o for o in objects.values() if o.get("agent_id") is not None}
        by_type: dict[str, list[dict[str, Any]]] = {}
        for o in objects.values():
            by_type.setdefault(o["type_name"], []).append(o)
        hub = by_type["hub"][0]
        station = by_type["aligner_station"][0]
        net_id, team_id = world.tag_ids[NET_TAG], world.tag_ids[TEAM_TAG]
        net_cells = [(o["r"], o["c"]) for o in objects.values() if net_id in o["tag_ids"]]
        neutral = {
            o["id"]: o
            for o in by_type.get("junction", [])
            if team_id not in o["tag_ids"] and alignable((o["r"], o["c"]), (hub["r"], hub["c"]), net_cells)
        }
        return agents, (hub, station, neutral)

    def _current_world(self) -> _World:
        sim = self._env.current_simulation
        if self._world is None or self._world.sim is not sim:
            blocked = blocked_cells(sim)
            tag_ids = {name: i for i, name in enumerate(sim.config.game.id_map().tag_names())}
            self._world = _World(sim=sim, blocked=blocked, tag_ids=tag_ids)
            if self.reuse:
                self._world.graph = _grid_graph(blocked)
                self._world.non_agent_types = [t for t in sim.object_type_names if t != "agent"]
            self._agents = [_AgentState() for _ in range(sim.num_agents)]
        return self._world

    def _distances(self, world: _World, goal: Cell) -> np.ndarray:
        """Walking distance to a neighbour of ``goal`` from every cell; searched once per episode and goal."""
        dist = world.dist_cache.get(goal)
        if dist is None:
            sources = _neighbours(goal)
            dist = _graph_bfs(world.graph, world.blocked, sources) if self.reuse else _bfs(world.blocked, sources)
            world.dist_cache[goal] = dist
        return dist

    def _nearest(self, world: _World, pos: Cell, junctions: list[dict[str, Any]]) -> int | None:
        """The junction with the shortest walk from pos (a junction is reached from a neighbouring cell)."""
        if not junctions:  # every junction aligned or claimed: most calls late in an episode
            return None
        best, best_d = None, np.inf
        if self.reuse:  # walks are symmetric: each junction's own map, read at pos, gives the same numbers
            for j in junctions:
                d = _at(self._distances(world, (j["r"], j["c"])), pos)
                if d < best_d:
                    best, best_d = j["id"], d
            return best
        dist = _bfs(world.blocked, [pos])
        for j in junctions:
            d = min(_at(dist, n) for n in _neighbours((j["r"], j["c"])))
            if d < best_d:
                best, best_d = j["id"], d
        return best

    def _explore(self, world: _World, state: _AgentState, pos: Cell) -> dict[str, int] | None:
        """Local mode, nothing known to align: the nearest free cell this agent has not seen (ties broken at
        random), walked to along one shortest path and kept until reached or until the agent is pushed off that
        path; None once every cell it can reach has been seen."""
        if state.explored:
            return None
        cell = state.explore
        if cell is not None and np.isfinite(state.explore_dist[pos]) and not _adjacent(pos, (cell["r"], cell["c"])):
            return cell
        from_pos = _graph_bfs(world.graph, world.blocked, [pos])
        dist = np.where(state.seen | world.blocked, np.inf, from_pos)
        best = dist.min()
        if not np.isfinite(best):  # for good without memory: the seen cells only grow, walls and objects stay put
            state.explore, state.explore_dist, state.explored = None, None, self.memory is None
            return None
        rows, cols = np.nonzero(dist == best)
        pick = self._rng.integers(len(rows))
        state.explore = {"r": int(rows[pick]), "c": int(cols[pick])}
        state.explore_dist = _path_distances(from_pos, pos, (state.explore["r"], state.explore["c"]))
        return state.explore

    def _step_toward(
        self, world: _World, state: _AgentState, pos: Cell, goal: dict[str, Any] | None, occupied: set[Cell],
        dist: np.ndarray | None = None,
    ) -> tuple[int, int]:
        """The action toward ``goal`` and the bitmask of the actions as good as it (``moves``)."""
        state.stuck = state.stuck + 1 if pos == state.last_cell else 0
        state.last_cell = pos
        if goal is None:
            return self._noop, 1 << self._noop
        goal_cell = (goal["r"], goal["c"])
        if _adjacent(pos, goal_cell):
            action = self._move_ids[(goal_cell[0] - pos[0], goal_cell[1] - pos[1])]
            return action, 1 << action
        if state.stuck >= STUCK_STEPS:
            # Another agent is in the way: a random step usually untangles a corridor.
            action = self._move_ids[list(MOVES.values())[self._rng.integers(len(MOVES))]]
            return action, 1 << action
        dist = self._distances(world, goal_cell) if dist is None else dist
        here = _at(dist, pos)
        options = [
            (_at(dist, n), n) for n in _neighbours(pos) if n not in occupied and _at(dist, n) < here
        ]
        if not options:
            return self._noop, 1 << self._noop
        _, nxt = min(options)
        action = self._move_ids[(nxt[0] - pos[0], nxt[1] - pos[1])]
        return action, sum(1 << self._move_ids[(n[0] - pos[0], n[1] - pos[1])] for _, n in options)


def _path_distances(from_pos: np.ndarray, pos: Cell, goal: Cell) -> np.ndarray:
    """One shortest path from pos to goal, read backwards off ``from_pos`` (walking distances from pos), as a
    distance map that ``_step_toward`` follows: each path cell holds its distance to the cell before goal, every
    other cell inf."""
    out = np.full(from_pos.shape, np.inf)
    cur, total = goal, from_pos[goal]
    while cur != pos:
        cur = next(n for n in _neighbours(cur) if _at(from_pos, n) == from_pos[cur] - 1)
        out[cur] = total - 1 - from_pos[cur]
    return out


def _look(state: _AgentState, pos: Cell, shape: tuple[int, int], step: int = 0, memory: int | None = None) -> None:
    """Marks the cells in the agent's view as seen; with ``memory``, forgets those out of view that long."""
    r, c = pos
    half = VIEW_MASK.shape[0] // 2
    r0, r1, c0, c1 = max(r - half, 0), min(r + half + 1, shape[0]), max(c - half, 0), min(c + half + 1, shape[1])
    view = VIEW_MASK[r0 - r + half:r1 - r + half, c0 - c + half:c1 - c + half]
    if memory is None:
        if state.seen is None:
            state.seen = np.zeros(shape, dtype=bool)
        state.seen[r0:r1, c0:c1] |= view
        return
    if state.seen_at is None:
        state.seen_at = np.full(shape, -memory, dtype=np.int64)  # never seen: forgotten at every step
    np.copyto(state.seen_at[r0:r1, c0:c1], step, where=view)
    state.seen = state.seen_at > step - memory


def blocked_cells(sim: Simulation) -> np.ndarray:
    """[height, width] bool: the cells an agent cannot walk onto (every object but the agents)."""
    blocked = np.zeros((sim.map_height, sim.map_width), dtype=bool)
    for o in sim.grid_objects().values():
        if o.get("agent_id") is None:
            blocked[o["r"], o["c"]] = True
    return blocked


def walking_distances(blocked: np.ndarray, goal: Cell) -> np.ndarray:
    """Walking distance from every free cell to a neighbour of ``goal`` (inf where unreachable)."""
    return _graph_bfs(_grid_graph(blocked), blocked, _neighbours(goal))


def alignable(cell: Cell, hub: Cell, net_cells: list[Cell]) -> bool:
    """The alignment distance rule: within 15 of a net:cogs member or within 25 of the hub (Euclidean)."""
    if _dist2(cell, hub) <= ALIGN_HUB_RADIUS**2:
        return True
    return any(_dist2(cell, n) <= ALIGN_NET_RADIUS**2 for n in net_cells)


def _dist2(a: Cell, b: Cell) -> int:
    return (a[0] - b[0]) ** 2 + (a[1] - b[1]) ** 2


def _adjacent(a: Cell, b: Cell) -> bool:
    return abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1


def _neighbours(cell: Cell) -> list[Cell]:
    return [(cell[0] + dr, cell[1] + dc) for dr, dc in MOVES.values()]


def _at(dist: np.ndarray, cell: Cell) -> float:
    r, c = cell
    return float(dist[r, c]) if 0 <= r < dist.shape[0] and 0 <= c < dist.shape[1] else np.inf


def _bfs(blocked: np.ndarray, sources: list[Cell]) -> np.ndarray:
    """Walking distance from the nearest free source cell to every free cell (inf elsewhere)."""
    h, w = blocked.shape
    dist = np.full((h, w), np.inf)
    queue: deque[Cell] = deque()
    for r, c in sources:
        if 0 <= r < h and 0 <= c < w and not blocked[r, c]:
            dist[r, c] = 0
            queue.append((r, c))
    while queue:
        r, c = queue.popleft()
        d = dist[r, c] + 1
        for dr, dc in MOVES.values():
            nr, nc = r + dr, c + dc
            if 0 <= nr < h and 0 <= nc < w and not blocked[nr, nc] and dist[nr, nc] == np.inf:
                dist[nr, nc] = d
                queue.append((nr, nc))
    return dist


def _grid_graph(blocked: np.ndarray) -> csr_matrix:
    """The free cells' 4-neighbour graph (node ``r * width + c``), each edge once; searched as undirected."""
    h, w = blocked.shape
    free = ~blocked.reshape(-1)
    node = np.arange(h * w).reshape(h, w)
    heads, tails = [], []
    for a, b in ((node[:, :-1], node[:, 1:]), (node[:-1, :], node[1:, :])):  # east and south neighbours
        a, b = a.reshape(-1), b.reshape(-1)
        both = free[a] & free[b]
        heads.append(a[both])
        tails.append(b[both])
    heads, tails = np.concatenate(heads), np.concatenate(tails)
    return csr_matrix((np.ones(len(heads)), (heads, tails)), shape=(h * w, h * w))


def _graph_bfs(graph: csr_matrix, blocked: np.ndarray, sources: list[Cell]) -> np.ndarray:
    """``_bfs`` on the prebuilt graph, in C (scipy): the same distances, ~25x faster on the aligner's map."""
    h, w = blocked.shape
    nodes = [r * w + c for r, c in sources if 0 <= r < h and 0 <= c < w and not blocked[r, c]]
    if not nodes:
        return np.full((h, w), np.inf)
    return dijkstra(graph, directed=False, unweighted=True, indices=nodes, min_only=True).reshape(h, w)
