"""Word lists of remote-sensing referring expressions, shared by the rule-based strategies.

Categories are DIOR's, RSVG-HR's, RRSIS-D's and RISBench's object classes plus the landmarks their
expressions mention; spatial vocabulary covers absolute positions, relations, ordinals and positional
superlatives. Everything is lower case.
"""

from __future__ import annotations

__all__ = [
    "APPEARANCE_PHRASES",
    "APPEARANCE_VERBS",
    "CATEGORY_PHRASES",
    "CATEGORY_WORDS",
    "COLLECTIVE_NOUNS",
    "COLOURS",
    "COPULAS",
    "DETERMINERS",
    "IMPERATIVES",
    "ORDINALS",
    "PRONOUNS",
    "RELATION_LEADS",
    "SPATIAL_ADJECTIVES",
    "SPATIAL_NOUNS",
    "SPATIAL_PREPOSITIONS",
    "SPATIAL_SUPERLATIVES",
    "STATES",
]


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Multi-word category names, merged into one token before tagging.
CATEGORY_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(name.split())
    for name in """swimming pool|baseball field|baseball diamond|basketball court|tennis court
    |ground track field|track field|running track|storage tank|oil tank|water tank
    |expressway service area|service area
    |expressway toll station|toll station|golf field|golf course|train station|railway station|parking lot
    |parking area|parking space|soccer field|football field|sports field|playing field|playground
    |bus station|gas station|power station|sewage treatment plant|water treatment plant|treatment plant
    |solar panel|solar panels|wind turbine|main road|sand bunker|tennis courts|swimming pools
    |baseball fields|basketball courts|storage tanks|ground track fields|parking lots|golf fields
    |train stations|soccer fields|football fields|oil tanks|water tanks|container yard|shipping container
    |residential area|residential building|office building|factory building|industrial area
    |running tracks|tennis centers|tennis center|basketball field|cooling tower|cooling towers""".split("|")
)

# Multi-word phrases that describe how the target looks or is arranged, not where it is.
APPEARANCE_PHRASES: tuple[tuple[str, ...], ...] = tuple(
    tuple(p.split())
    for p in """side by side|in a row|in rows|in a line|in a circle|in pairs|in a cluster|in a group
    |under construction|in parallel|end to end|back to back""".split("|")
)

# Nouns that name a group whose members are the target: "a cluster of four storage tanks".
COLLECTIVE_NOUNS = _words("cluster group row pair set line couple number lot array series collection")

CATEGORY_WORDS = _words(
    """airplane airplanes plane planes aircraft aircrafts jet jets airport airports helicopter helicopters
    bridge bridges overpass overpasses chimney chimneys dam dams harbor harbors harbour harbours port ports
    ship ships boat boats vessel vessels yacht yachts stadium stadiums vehicle vehicles car cars truck trucks
    van vans bus buses sedan sedans windmill windmills turbine turbines roundabout roundabouts building
    buildings house houses tank tanks pool pools court courts field fields road roads highway highways
    expressway river rivers lake lakes pond ponds reservoir reservoirs woods wood forest forests tree trees
    runway runways terminal terminals pier piers dock docks apron aprons canal canals railway railways
    track tracks container containers crane cranes tower towers factory factories warehouse warehouses
    church school schools park parks garden gardens farmland grassland bareland island islands beach sea
    ocean coast shore intersection crossroad crossroads street streets lawn lawns square plaza station
    stations platform platforms roof roofs residence hospital mosque temple lot lots area areas structure
    structures object objects facility facilities"""
)

SPATIAL_NOUNS = _words(
    """left right top bottom middle center centre corner corners side sides edge edges part parts half
    end ends north south east west northeast northwest southeast southwest border boundary periphery
    position front back rear interior outskirts margin margins upside downside"""
)

SPATIAL_ADJECTIVES = _words(
    """upper lower far central middle left right top bottom northern southern eastern western inner outer
    northeastern northwestern southeastern southwestern uppermost lowermost centre center"""
)

SPATIAL_SUPERLATIVES = _words(
    """leftmost rightmost topmost bottommost left-most right-most top-most bottom-most upper-most
    lower-most uppermost lowermost lefternmost righternmost topernmost bottomernmost northernmost
    southernmost easternmost westernmost nearest closest farthest furthest outermost innermost
    highest lowest"""
)

ORDINALS = _words(
    """first second third fourth fifth sixth seventh eighth ninth tenth last 1st 2nd 3rd 4th 5th 6th 7th
    8th 9th 10th"""
)

SPATIAL_PREPOSITIONS = _words(
    """on in at near beside besides behind above below under over between among amongst around along
    alongside across inside within beneath underneath atop opposite from by toward towards into onto
    outside past through throughout"""
)

# Words that open a relation or position without a preposition first ("adjacent to", "surrounded by").
RELATION_LEADS = _words(
    """next adjacent close closer nearby neighboring neighbouring surrounded surrounding bordering
    bordered flanked facing spanning crossing occupying overlooking adjoining connecting connected
    parallel perpendicular right left"""
)

COPULAS = _words(
    """is are was were be being been located situated positioned placed lies lie lying sits sit sitting
    stands stand standing seen found lay"""
)

IMPERATIVES = _words("find search locate identify detect select segment show point mark spot look get")

APPEARANCE_VERBS = _words(
    """has have having exhibits exhibit exhibiting shows show showing casts cast casting emits emit
    emitting appears appear featuring features feature displays display contains contain containing
    looks resembles covered filled painted"""
)

STATES = _words(
    """parked moored anchored docked visible hidden partially partly covered under construction damaged
    empty occupied arranged clustered lined aligned stacked scattered abandoned operating"""
)

COLOURS = _words(
    """white black gray grey red blue green yellow orange brown purple pink dark light bright pale beige
    cyan turquoise silver golden gold tan khaki maroon navy teal colorful colourful multicolored
    blue-roofed red-roofed white-roofed"""
)

DETERMINERS = _words("a an the this that these those some another other each every any all its their")

PRONOUNS = _words("it they them its their which that who")
