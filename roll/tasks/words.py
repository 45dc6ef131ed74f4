"""The real English words the generated tasks are built from (`pytest tests/roll/test_suite.py`).

Real words, not random strings: a byte-level BPE tokenizer has them as few tokens and the agent can copy
them from the instruction, so reward is reachable (random strings: 1.6 % held-out after 10 minutes).

`VOCAB` is the larger vocabulary of the generated suite (`roll/tasks/suite.py`): several hundred common
nouns, lowercase a-z, 3-9 letters. `vocab_split` partitions it once, by a fixed shuffle, into the words
train instances are built from and the words held-out instances are built from.
"""

from __future__ import annotations

import random

WORDS = """
apple river stone cloud garden window silver orange planet forest candle winter summer bridge
pencil rocket button coffee dragon harbor island jungle ladder mirror needle ocean pepper rabbit
saddle tiger violin wagon yellow zebra anchor basket castle desert engine feather guitar hammer
jacket kettle lemon magnet nickel paper quartz ribbon shadow tunnel valley walnut butter copper
falcon ginger honey lantern marble meadow pillow puzzle salmon thunder tomato velvet whistle cotton
""".split()

# The walking skeleton's WORDS first, then the rest; duplicates dropped keeping the first.
VOCAB: tuple[str, ...] = tuple(
    dict.fromkeys(
        WORDS
        + """
apple river stone cloud garden window silver orange planet forest candle winter summer bridge pencil rocket
button coffee dragon harbor island jungle ladder mirror needle ocean pepper rabbit saddle tiger violin wagon
yellow zebra anchor basket castle desert engine feather guitar hammer jacket kettle lemon magnet nickel paper
quartz ribbon shadow tunnel valley walnut butter copper falcon ginger honey lantern marble meadow pillow
puzzle salmon thunder tomato velvet whistle cotton acorn almond amber arrow autumn badger bakery balloon
bamboo banana banjo barley barrel beacon beaver bedroom beetle bicycle biscuit blanket blossom bottle boulder
bracelet bread breeze brick broom bubble bucket buffalo cabbage cabin cactus camel camera canoe canyon
carpet carrot cashew cedar cellar cereal chair chalk cheese cherry chimney circle citrus clover coconut comet
compass cookie coral cousin crayon cricket crystal cupboard curtain cushion daisy dancer dolphin donkey
doorway dragonfly drawer drum eagle earth easel elbow elephant emerald fabric fence fern ferry fiddle finger
flame flute forge fountain fox frost galaxy garlic gazelle geyser glacier glove goose gravel grape grove gull
hazel hedge helmet heron hill hollow horizon horse hotel iceberg igloo insect iris ivory jasmine jelly jewel
journey juniper kayak kitten kiwi koala lagoon lake lamp lark lava leopard lettuce library lily lion lizard
llama lobster locket lotus lumber mango maple market melon meteor mint mitten monkey moose mosaic moss
mountain muffin mushroom napkin nectar nest noodle notebook nutmeg oak oasis olive onion orchard orchid otter
owl oyster paddle palace panda pansy parrot peach peanut pearl pebble pelican penguin piano pickle pigeon pine
pirate plum pocket pony poppy potato prairie pumpkin quail quilt raccoon radish rain raisin raven reef rhino
robin rose ruby saffron sailor sand sardine satchel scarf school seal seed shell shovel shrimp signal skate
sled slipper snail snow sock sofa spider spinach spoon spruce squash squirrel stable star storm stove straw
stream sugar sunset swallow swan sweater table tablet tea teapot temple tent thimble thistle thread tide
timber toast tortoise towel tower tractor trail train tree trumpet tulip turkey turnip turtle umbrella unicorn
vase village vine violet volcano waffle walrus wand wasp water whale wheat wheel willow wind wizard wolf wool
yacht yarn yogurt acrobat admiral airport alley antler apron archer attic avocado axle bagel ballad bandana
banner barn basil bay beach bead bell bench berry blender blizzard bonnet boot bowl box bramble brook brush
buckle bugle bull cable cafe cake calendar canal cannon cape captain card cargo carriage cart cattle cave
chapel chariot chess chestnut chicken chisel cider cinnamon clam cliff clock cobra cocoa collar cork corn
cottage cow crab crane crate creek crown cup cymbal dagger dam deer denim diamond dice dish dock dome dove
dune dust eel egg elk elm fairy farm fig film fish flag flask flower fog folder fork fossil frog fudge funnel
garage gate gem ghost giant goat gold gong gorilla grain granite grass guard hammock harp hat hawk hay heart
hen hive hook hornet hut ink jar jeep jug kernel key kite knife knot lace lamb lasso leaf ledge lemur lens
lime lint lock log loom lynx mall map mask mast mat meal mill mole moon moth mule nail net newt oar oat ocelot
orbit oven owlet pail pan panther parcel park pasta path paw pea pear pen pie pig pin pipe pit plank plate
plow pod pole pond pool pot pouch prism pulley pump quiver radio raft rail ram ramp rat reed ring road rock
roof room root rope rug sack sail salt saw scale seat sheep ship shoe silk sink skunk slate sloth snake soap
soup spade spire sponge stag stamp steam stem stool sun swamp sword tack tail tank tape taxi thorn throne tin
toad tofu tool torch toy trout tub tuba tusk twig urn van vest vole wall wax web well whip wick wig wing wire
wok worm yak yam zinc
""".split()
    )
)
HELDOUT_FRACTION = 0.2


def vocab_split(split: str) -> tuple[str, ...]:
    """The words of one split ("train" or "heldout"): a fixed partition of VOCAB, the same in every run."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; known: train, heldout")
    return _PARTITION[split]


def _partition() -> dict[str, tuple[str, ...]]:
    shuffled = sorted(VOCAB)
    random.Random("ale-vocab-v1").shuffle(shuffled)  # a str seed hashes the same in every process
    cut = round(len(shuffled) * HELDOUT_FRACTION)
    return {"heldout": tuple(sorted(shuffled[:cut])), "train": tuple(sorted(shuffled[cut:]))}


_PARTITION = _partition()
