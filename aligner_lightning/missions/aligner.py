"""The CoGames aligner tutorial mission ("seed era"), built from mettagrid 0.26 primitives.

Target label: ``cogsguard_arena.aligner_tutorial.easy.aligner_rewards.braveheart``. The rules, their numbers
and the mettagrid primitive behind each one are described in ``docs/mission.md``; the comments below name the
section of that page they implement. The object and agent configs are built by functions that take an
``AlignerParams``, so tests and small worlds can put the same rules on another map.
"""

from __future__ import annotations

from dataclasses import dataclass

from mettagrid.config.event_config import EventConfig, periodic
from mettagrid.config.filter import (
    GameValueFilter,
    TargetIsUsableFilter,
    TargetLocEmptyFilter,
    HandlerTarget,
    actorHas,
    actorHasAnyOf,
    actorHasTag,
    anyOf,
    hasTag,
    hasTagPrefix,
    isNear,
    isNot,
    maxDistance,
    query,
    sharedTagPrefix,
)
from mettagrid.config.game_value import (
    MaxGameValue,
    QueryCountValue,
    QueryInventoryValue,
    StatValue,
    SumGameValue,
    stat,
    val,
)
from mettagrid.config.handler_config import AnyHandler, Handler, allOf, firstMatch
from mettagrid.config.mettagrid_config import (
    ActionsConfig,
    AgentConfig,
    AnyGridObjectConfig,
    ChangeVibeActionConfig,
    GameConfig,
    GlobalObsConfig,
    GridObjectConfig,
    InventoryConfig,
    InventoryValue,
    MettaGridConfig,
    MoveActionConfig,
    NoopActionConfig,
    ObsConfig,
    ResourceLimitsConfig,
    WallConfig,
)
from mettagrid.config.mutation import (
    ClearInventoryMutation,
    EntityTarget,
    RelocateMutation,
    SetGameValueMutation,
    StatsMutation,
    StatsTarget,
    addTag,
    logActorAgentStat,
    logStatToGame,
    queryDelta,
    queryDeposit,
    recomputeMaterializedQuery,
    removeTag,
    removeTagPrefix,
    updateActor,
    updateTarget,
    useTarget,
    withdraw,
)
from mettagrid.config.query import ClosureQuery, MaterializedQuery, Query
from mettagrid.config.reward_config import AgentReward, reward
from mettagrid.config.tag import typeTag
from mettagrid.config.territory_config import TerritoryConfig, TerritoryControlConfig
from mettagrid.config.vibes import Vibe
from mettagrid.map_builder.map_builder import AnyMapBuilderConfig
from mettagrid.mapgen.mapgen import MapGen
from mettagrid.mapgen.scenes.biome_arena import BiomeArenaConfig
from mettagrid.mapgen.scenes.building_distributions import DistributionConfig, DistributionType
from mettagrid.mapgen.scenes.compound import CompoundConfig

from aligner_lightning.stats import (
    ALIGNED,
    ALIGNED_BY_AGENT,
    ALIGNED_GAINED,
    ALIGNED_HELD,
    ALIGNED_LOST,
    HEART_WITHDRAWN,
    NETWORK_HELD,
    SCRAMBLED_BY_AGENT,
    TEAM,
    gained,
    hub_amount,
    lost,
    withdrawn,
)

LABEL = "cogsguard_arena.aligner_tutorial.easy.aligner_rewards.braveheart"

# Resource order (docs/mission.md, Agents): it fixes the observation feature ids of the inv:<r> tokens.
ELEMENTS = ("oxygen", "carbon", "germanium", "silicon")
GEAR = ("aligner", "scrambler", "miner", "scout")
RESOURCES = ("energy", "heart", "hp", "solar", *ELEMENTS, *GEAR)

TEAM_TAG = f"team:{TEAM}"
NET_TAG = f"net:{TEAM}"
TERRITORY = "team_territory"

# Gear stations (docs/mission.md, Objects): hub elements paid per gear purchase.
GEAR_COSTS: dict[str, dict[str, int]] = {
    "aligner": {"carbon": 3, "oxygen": 1, "germanium": 1, "silicon": 1},
    "scrambler": {"carbon": 1, "oxygen": 3, "germanium": 1, "silicon": 1},
    "miner": {"carbon": 1, "oxygen": 1, "germanium": 3, "silicon": 1},
    "scout": {"carbon": 1, "oxygen": 1, "germanium": 1, "silicon": 3},
}
HUB_WEALTH = 3  # hub elements of each kind = agents x max element cost (3) x wealth (3)
HEART_COST = 7  # elements of each kind per heart the hub crafts
EXTRACTOR_UNITS = 200
ALIGN_NET_RADIUS = 15  # a junction aligns within 15 of a net:cogs member ...
ALIGN_HUB_RADIUS = 25  # ... or within 25 of the hub
NET_EDGE_RADIUS = 25  # the network: aligned junctions within 25 of a member join it
HUB_TERRITORY_STRENGTH = 20
JUNCTION_TERRITORY_STRENGTH = 10
MOVE_ENERGY = 4
DAY_NIGHT_PERIOD = 200  # day at 0, 200, ...; night at 100, 300, ...
SOLAR_SWING = 2

# Map names used by the Compound scene; the object type names follow cogames ("hub", "<gear>_station").
HUB_MAP_NAME = "c:hub"
STATION_MAP_NAMES = tuple(f"c:{g}" for g in GEAR)
BUILDINGS = ("junction", "germanium_extractor", "silicon_extractor", "oxygen_extractor", "carbon_extractor")

# The 7 vibes of the original, in order; they have no gameplay effect (docs/mission.md, Actions).
VIBES = (
    Vibe("😐", "default"),
    Vibe("❤️", "heart"),
    Vibe("⚙️", "gear"),
    Vibe("🌀", "scrambler"),
    Vibe("🔗", "aligner"),
    Vibe("⛏️", "miner"),
    Vibe("🔭", "scout"),
)


@dataclass(frozen=True)
class AlignerParams:
    """The overridable knobs of the mission; defaults are the tutorial's values."""

    num_agents: int = 4
    max_steps: int = 1000
    heart_limit: int = 3
    hub_hearts: int = 255
    map_seed: int | None = None  # None: a fresh map every episode, as the original
    num_tokens: int = 200
    territory_obs: bool = True


def hub_query() -> Query:
    """The cogs hub: the object of type hub tagged team:cogs."""
    return query(typeTag("hub"), [hasTag(TEAM_TAG)])


def _hub_has(resources: dict[str, int]) -> list[GameValueFilter]:
    return [
        GameValueFilter(target=HandlerTarget.TARGET, value=QueryInventoryValue(query=hub_query(), item=r), min=n)
        for r, n in resources.items()
    ]


def _deposit_elements() -> list:
    return [queryDeposit(hub_query(), {el: 100 for el in ELEMENTS}, stat_prefix=f"{TEAM}/")]


def _log_elements_withdrawn() -> list[StatsMutation]:
    return [logStatToGame(withdrawn(el)) for el in ELEMENTS]


def agent_config(params: AlignerParams) -> AgentConfig:
    """A cogs agent: inventory limits, per-tick rules and rewards (docs/mission.md: Agents, Every tick, Rewards)."""
    limits = {
        "hp": ResourceLimitsConfig(base=100, resources=["hp"], modifiers={"scout": 400, "scrambler": 200}),
        "gear": ResourceLimitsConfig(base=0, max=1, resources=list(GEAR), modifiers={"hp": 100}),
        "heart": ResourceLimitsConfig(base=0, max=params.heart_limit, resources=["heart"], modifiers={"hp": 100}),
        "cargo": ResourceLimitsConfig(base=4, resources=list(ELEMENTS), modifiers={"miner": 40}),
        "energy": ResourceLimitsConfig(base=20, resources=["energy"]),
    }
    on_tick = allOf(
        [
            # "regen" drains despite its name; the territory heal refills it.
            Handler(name="regen", mutations=[updateActor({"hp": -1})]),
            Handler(
                name="track_aligned_junctions",
                mutations=[logActorAgentStat(NETWORK_HELD, source=QueryCountValue(query=query(NET_TAG)))],
            ),
            Handler(
                name="solar_to_energy",
                mutations=[
                    SetGameValueMutation(value=InventoryValue(item="energy"), source=InventoryValue(item="solar"))
                ],
            ),
        ]
    )
    return AgentConfig(
        team_id=0,
        tags=[TEAM_TAG],
        inventory=InventoryConfig(limits=limits, initial={"hp": 100, "energy": 100, "solar": 1}),
        on_tick=on_tick,
        # A use costs energy only when one of the target's handlers fired (see move_config).
        on_after_use_handler=Handler(name="use_cost", mutations=[updateActor({"energy": -MOVE_ENERGY})]),
        rewards=agent_rewards(params.max_steps),
    )


def move_config() -> MoveActionConfig:
    """Moves: a successful step or use costs 4 energy and needs it; a failed one is free.

    mettagrid 0.26.21 ignores ``MoveActionConfig.consumed_resources`` (a move into an empty cell is
    free), so the cost is charged by an explicit move handler chain plus the agent's after-use handler.
    """
    has_energy = actorHas({"energy": MOVE_ENERGY})
    return MoveActionConfig(
        handlers=[
            Handler(
                name="step",
                filters=[TargetLocEmptyFilter(), has_energy],
                mutations=[RelocateMutation(), updateActor({"energy": -MOVE_ENERGY})],
            ),
            Handler(name="use", filters=[TargetIsUsableFilter(), has_energy], mutations=[useTarget()]),
        ]
    )


def agent_rewards(max_steps: int) -> dict[str, AgentReward]:
    """The objective (1/max_steps per network member per tick) plus the aligner shaping (docs/mission.md, Rewards)."""
    weights = {
        gained("aligner"): 2.0,
        lost("aligner"): -2.0,
        gained("heart"): 0.5,
        lost("heart"): -0.5,
        ALIGNED_BY_AGENT: 5.0,
        gained("miner"): -1.0,
        gained("scout"): -1.0,
        gained("scrambler"): -1.0,
    }
    rewards = {NETWORK_HELD: reward(stat(NETWORK_HELD), weight=1.0 / max_steps)}
    rewards |= {name.replace(".", "_"): reward(stat(name), weight=w) for name, w in weights.items()}
    return rewards


def hub_config(params: AlignerParams) -> GridObjectConfig:
    """The team hub; of its five handlers only get_heart fires in this mission (docs/mission.md, Objects)."""
    shared = sharedTagPrefix("team:")
    elements = HUB_WEALTH * max(max(c.values()) for c in GEAR_COSTS.values()) * params.num_agents
    heart_cost = {el: HEART_COST for el in ELEMENTS}
    handlers = [
        Handler(name="deposit", filters=[shared, actorHasAnyOf(list(ELEMENTS))], mutations=_deposit_elements()),
        Handler(
            name="get_heart",
            filters=[shared, *_hub_has({"heart": 2})],
            mutations=[withdraw({"heart": 1}), logStatToGame(HEART_WITHDRAWN)],
        ),
        Handler(
            name="get_and_make_heart",
            filters=[shared, *_hub_has({"heart": 1}), *_hub_has(heart_cost)],
            mutations=[
                updateTarget({el: -HEART_COST for el in ELEMENTS}),
                updateActor({"heart": 1}),
                *_log_elements_withdrawn(),
            ],
        ),
        Handler(
            name="get_last_heart",
            filters=[shared, *_hub_has({"heart": 1})],
            mutations=[withdraw({"heart": 1}), logStatToGame(HEART_WITHDRAWN)],
        ),
        Handler(
            name="make_heart",
            filters=[shared, *_hub_has(heart_cost)],
            mutations=[updateTarget({**{el: -HEART_COST for el in ELEMENTS}, "heart": 1}), *_log_elements_withdrawn()],
        ),
    ]
    return GridObjectConfig(
        name="hub",
        map_name=HUB_MAP_NAME,
        tags=[TEAM_TAG],
        territory_controls=[TerritoryControlConfig(territory=TERRITORY, strength=HUB_TERRITORY_STRENGTH)],
        inventory=InventoryConfig(
            initial={**{el: elements for el in ELEMENTS}, "heart": params.hub_hearts},
            limits={"elements": ResourceLimitsConfig(base=10000, resources=list(ELEMENTS))},
        ),
        on_use_handler=firstMatch(handlers),
    )


def station_config(gear: str) -> GridObjectConfig:
    """A gear station; buying clears the actor's gear group and debits the hub."""
    shared = sharedTagPrefix("team:")
    cost = GEAR_COSTS[gear]
    handlers = [
        Handler(name="keep_gear", filters=[shared, actorHas({gear: 1})]),
        Handler(
            name="change_gear",
            filters=[shared, *_hub_has(cost)],
            mutations=[
                ClearInventoryMutation(target=EntityTarget.ACTOR, limit_name="gear"),
                queryDelta(hub_query(), {el: -n for el, n in cost.items()}),
                updateActor({gear: 1}),
            ],
        ),
    ]
    return GridObjectConfig(
        name=f"{gear}_station", map_name=f"c:{gear}", tags=[TEAM_TAG], on_use_handler=firstMatch(handlers)
    )


def junction_config() -> GridObjectConfig:
    """A neutral junction that cogs agents align with aligner gear and a heart."""
    handlers: list[AnyHandler] = [
        Handler(
            name="deposit_cogs",
            filters=[actorHasTag(TEAM_TAG), sharedTagPrefix("team:"), actorHasAnyOf(list(ELEMENTS))],
            mutations=_deposit_elements(),
        ),
        # Only an agent of another team with scrambler gear could fire this; kept for rule parity.
        Handler(
            name="scramble_cogs",
            filters=[hasTag(TEAM_TAG), isNot(sharedTagPrefix("team:")), actorHas({"scrambler": 1, "heart": 1})],
            mutations=[
                removeTagPrefix("net:"),
                updateActor({"heart": -1}),
                logActorAgentStat(SCRAMBLED_BY_AGENT),
                logStatToGame(ALIGNED_LOST),
                recomputeMaterializedQuery(NET_TAG),
            ],
        ),
        Handler(
            name="align_cogs",
            filters=[
                actorHas({"aligner": 1, "heart": 1}),
                isNot(hasTagPrefix("team:")),
                anyOf([isNear(query(NET_TAG), ALIGN_NET_RADIUS), isNear(hub_query(), ALIGN_HUB_RADIUS)]),
            ],
            mutations=[
                updateActor({"heart": -1}),
                logActorAgentStat(ALIGNED_BY_AGENT),
                logStatToGame(ALIGNED_GAINED),
                addTag(TEAM_TAG),
                addTag(NET_TAG),
                recomputeMaterializedQuery(NET_TAG),
            ],
        ),
    ]
    return GridObjectConfig(
        name="junction",
        territory_controls=[TerritoryControlConfig(territory=TERRITORY, strength=JUNCTION_TERRITORY_STRENGTH)],
        # Losing network membership un-aligns the junction (it stops projecting territory).
        on_tag_remove={NET_TAG: Handler(mutations=[removeTag(TEAM_TAG)])},
        on_use_handler=firstMatch(handlers),
    )


def extractor_config(element: str) -> GridObjectConfig:
    """An element extractor: irrelevant to aligning, but part of the world."""
    handlers = [
        Handler(name="miner", filters=[actorHas({"miner": 1})], mutations=[withdraw({element: 10}, remove_when_empty=True)]),
        Handler(name="extract", mutations=[withdraw({element: 1}, remove_when_empty=True)]),
    ]
    return GridObjectConfig(
        name=f"{element}_extractor",
        inventory=InventoryConfig(initial={element: EXTRACTOR_UNITS}),
        on_use_handler=firstMatch(handlers),
    )


def object_configs(params: AlignerParams) -> dict[str, AnyGridObjectConfig]:
    objects: dict[str, AnyGridObjectConfig] = {"wall": WallConfig(), "hub": hub_config(params)}
    objects |= {f"{g}_station": station_config(g) for g in GEAR}
    objects["junction"] = junction_config()
    objects |= {f"{el}_extractor": extractor_config(el) for el in ELEMENTS}
    return objects


def game_on_tick() -> AnyHandler | None:
    """Game stats written every tick (docs/mission.md, Statistics)."""
    connected = MaxGameValue(values=[SumGameValue(values=[QueryCountValue(query=query(NET_TAG)), val(-1)]), val(0)])
    handlers = [
        Handler(
            name="aligned_junctions",
            mutations=[StatsMutation(stat=ALIGNED, target=StatsTarget.GAME, source=connected)],
        ),
        Handler(
            name="aligned_junctions_held",
            mutations=[
                logStatToGame(
                    ALIGNED_HELD, source=StatValue(name=ALIGNED, scope="game")
                )
            ],
        ),
        Handler(
            name="hub_amounts",
            mutations=[
                StatsMutation(
                    stat=hub_amount(r),
                    target=StatsTarget.GAME,
                    source=QueryInventoryValue(query=hub_query(), item=r),
                )
                for r in RESOURCES
            ],
        ),
    ]
    return allOf(handlers)


def obs_config(params: AlignerParams) -> ObsConfig:
    """Observations; territory tokens stand in for the per-tile mask that mettagrid 0.26 no longer emits
    (docs/mission.md, Deviations)."""
    team_hub = query(typeTag("hub"), [sharedTagPrefix("team:")])
    return ObsConfig(
        width=13,
        height=13,
        num_tokens=params.num_tokens,
        aoe_mask=True,
        territory=params.territory_obs,
        global_obs=GlobalObsConfig(
            local_position=True,
            last_action_move=True,
            obs={f"team:{el}": QueryInventoryValue(query=team_hub, item=el) for el in ELEMENTS},
        ),
    )


def game_config(params: AlignerParams, map_builder: AnyMapBuilderConfig) -> GameConfig:
    """The full rule set of the mission on any map that uses its map names."""
    day_night = {
        name: EventConfig(
            name=name,
            target_query=query(typeTag("agent")),
            timesteps=periodic(start=start, period=DAY_NIGHT_PERIOD, end=params.max_steps),
            mutations=[updateTarget({"solar": delta})],
        )
        for name, start, delta in (("day", 0, SOLAR_SWING), ("night", DAY_NIGHT_PERIOD // 2, -SOLAR_SWING))
    }
    network = MaterializedQuery(
        tag=NET_TAG,
        query=ClosureQuery(
            source=hub_query(),
            candidates=query(typeTag("junction"), [hasTag(TEAM_TAG)]),
            edge_filters=[maxDistance(NET_EDGE_RADIUS)],
        ),
    )
    heal = Handler(filters=[sharedTagPrefix("team:")], mutations=[updateTarget({"energy": 100, "hp": 100})])
    return GameConfig(
        resource_names=list(RESOURCES),
        num_agents=params.num_agents,
        max_steps=params.max_steps,
        episode_truncates=False,
        obs=obs_config(params),
        agent=agent_config(params),
        actions=ActionsConfig(
            noop=NoopActionConfig(),
            move=move_config(),
            change_vibe=ChangeVibeActionConfig(vibes=list(VIBES)),
        ),
        objects=object_configs(params),
        territories={TERRITORY: TerritoryConfig(tag_prefix="team:", presence={"heal": heal})},
        events=day_night,
        tags=[TEAM_TAG, NET_TAG],
        materialize_queries=[network],
        on_tick=game_on_tick(),
        map_builder=map_builder,
    )


def arena_map(map_seed: int | None) -> MapGen.Config:
    """The COGSGUARD_ARENA grid, 50 x 50 inside a 5-cell wall frame (docs/mission.md, Map)."""
    weights = {name: (0.7 if name == "junction" else 0.3) for name in BUILDINGS}
    return MapGen.Config(
        width=50,
        height=50,
        seed=map_seed,
        instance=BiomeArenaConfig(
            spawn_count=20,
            building_coverage=0.1,
            map_corner_offset=1,
            building_names=list(BUILDINGS),
            building_weights=weights,
            building_distributions={"junction": DistributionConfig(type=DistributionType.POISSON)},
            hub=CompoundConfig(
                hub_object=HUB_MAP_NAME,
                corner_bundle="extractors",
                cross_bundle="none",
                cross_distance=7,
                stations=list(STATION_MAP_NAMES),
            ),
        ),
    )


def make_aligner_tutorial(params: AlignerParams) -> MettaGridConfig:
    return MettaGridConfig(label=LABEL, game=game_config(params, arena_map(params.map_seed)))
