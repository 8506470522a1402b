"""Personal names of contacts and device nicknames, split into training and held-out pools.

Owns the name pool used for context biasing: first names, surnames and nicknames that users give
their contacts, and nicknames they give their devices. The pool is split deterministically (sha256
of the name) into ``TRAIN_NAMES`` and ``HELDOUT_NAMES`` (about 20% held out), so the test split can
measure biasing towards names never heard in training. Names that are words of the request
vocabulary (``VOCAB_NAMES``: "john", "sheila", "marvin"...) are always on the training side.
"""

from __future__ import annotations

import hashlib

VOCAB_NAMES = frozenset(
    """alex amy anna brian chris daniel david emily emma james jessica john karen kate kevin laura
    linda lisa maria mark marvin mary michael nancy olivia paul peter rachel robert sam sarah sheila
    sophia steve susan thomas tony william""".split()
)
"""Names that are also words of the measured vocabulary: always training names."""

FIRST_NAMES = tuple(
    sorted(
        VOCAB_NAMES
        | set(
            """aaliyah abigail adrian aiden aisha alejandro alice amara andre angela antonio
            arjun ava beatrice benjamin bianca bruno caleb camila carlos carmen charlotte chloe
            connor dante deepak diego dmitri eleanor elena elijah eliza ethan fatima felix fiona
            gabriel giulia grace hannah harper hiroshi hugo ian ingrid isaac isabella ivan jasmine
            javier jonah julia kai kenji keisha layla leo liam lucas luca lucy maya mateo mei
            mila nadia naomi nathan nina noah nora oscar owen priya quentin rafael ravi rosa ruby
            samir santiago scarlett sebastian sienna simone sofia stella tariq theo valentina
            victor vivian wei xavier yara yusuf zara zoe abdul ada agnes ahmed alina amelia
            anton astrid aurelio bilal boris cecilia clara cyrus dalia darius desmond eamon
            ezra farah gemma gideon greta hamza hector imani iris jada jorge joaquin juno kamala
            kofi lars leila lorenzo malik marco margot mohammed nikolai nils olga omar paloma
            petra quinn raj rhea rohan selma soren tomas ulla uma vera wanda yasmin yuki zane""".split()
        )
    )
)
"""Given names (including the vocabulary names)."""

SURNAMES = tuple(
    sorted(
        """abbott alvarez anderson baker bennett brooks castillo chen clarke collins cooper
        dawson delgado dubois evans fernandez fischer foster garcia gonzalez gupta hansen harris
        hughes ivanova jackson jensen kaur kennedy kim kowalski larsen lee lopez martinez mcdonald
        morales morgan murphy nakamura nguyen novak o'brien o'connor okafor olsen patel perez
        petrov quinn ramirez reyes rossi russo schmidt silva singh sullivan tanaka torres turner
        vasquez wagner walsh watanabe weber yamamoto zhang adeyemi bauer byrne dimitriou
        eriksson goldberg haddad horvath ibrahim jovanovic kovacs lindqvist mendoza moreau nowak
        oyelaran popescu rahman sato schneider takahashi vogel whitfield""".split()
    )
)
"""Family names (spoken alone as a contact, or after a given name)."""

NICKNAMES = tuple(
    sorted(
        """ace bubba buddy champ cookie dizzy gigi jojo kiki lulu mimi nana nono pip poppy
        sunny tiggy ziggy""".split()
    )
)
"""Contact nicknames."""

DEVICE_NAMES = tuple(
    sorted(
        """aurora blinky bolt breezy comet cosmo ember flicker glimmer halo jarvis luna nimbus
        nova orbit pixel rocket rusty sparky spark twinkle zephyr""".split()
    )
)
"""Nicknames users give their devices ("turn on sparky")."""

PERSON_NAMES = tuple(sorted(set(FIRST_NAMES) | set(SURNAMES) | set(NICKNAMES)))
"""Every name a contact may have."""

HELDOUT_FRACTION = 0.22


def _heldout(name: str) -> bool:
    if name in VOCAB_NAMES:
        return False
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64 < HELDOUT_FRACTION


TRAIN_NAMES = tuple(n for n in PERSON_NAMES + DEVICE_NAMES if not _heldout(n))
"""Names (persons and devices) that training utterances speak and list as context."""

HELDOUT_NAMES = tuple(n for n in PERSON_NAMES + DEVICE_NAMES if _heldout(n))
"""Names reserved for the test split: never spoken in training."""


def is_device_name(name: str) -> bool:
    """Whether ``name`` is a device nickname (else it is treated as a person's name)."""
    return name in _DEVICE_SET


_DEVICE_SET = frozenset(DEVICE_NAMES)
