"""Personal names of contacts and device nicknames, split into training and held-out pools.

Owns the name pool used for context biasing: first names, surnames and nicknames that users give
their contacts, and nicknames they give their devices. The pool is split deterministically (sha256
of the name) into ``TRAIN_NAMES`` and ``HELDOUT_NAMES`` (about 20% held out), so the test split can
measure biasing towards names never heard in training. Names that are words of the request
vocabulary (``VOCAB_NAMES``: "john", "sheila", "marvin"...) are always on the training side.

Beside that core pool, :func:`wide_names` gives 22,133 more given names and surnames from 23
locales (``wide_names.txt``, written by ``python -m train.corpus.names`` from the name lists of
the Faker package). Training utterances may speak them (``synthesize_corpus(wide_names=...)``),
to show the model many more spellings than the 273 core training names (so far this has not
made unheard names recognizable; see the README). The file holds
no held-out name and no name that eSpeak NG pronounces like one (same phonemes in en-us or
en-gb): held-out names stay unheard in training.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path

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


WIDE_NAMES_FILE = Path(__file__).with_name("wide_names.txt")
"""The wide name list: ``first NAME`` and ``last NAME`` lines after ``#`` comment lines."""

_FAKER_LOCALES = (
    "en en_US en_GB en_IE en_IN en_NZ en_KE en_NG en_PK es_ES es_MX it_IT de_DE fr_FR pt_BR nl_NL "
    "pl_PL sv_SE tr_TR ga_IE yo_NG sw vi_VN"
).split()
_NAME_RE = re.compile(r"^[a-z]{2,14}('[a-z]{2,12})?$")


@functools.cache
def wide_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(given names, surnames)`` of the wide list (sorted, lowercase, no held-out name).

    Raises:
        RuntimeError: the list is missing or names a held-out name (a damaged install).
    """
    if not WIDE_NAMES_FILE.exists():
        raise RuntimeError(
            f"missing {WIDE_NAMES_FILE}: reinstall, or run python -m train.corpus.names"
        )
    first, last = [], []
    for k, line in enumerate(WIDE_NAMES_FILE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        kind, _, name = line.partition(" ")
        if kind not in ("first", "last") or not _NAME_RE.match(name):
            raise RuntimeError(f"{WIDE_NAMES_FILE}:{k}: expected 'first NAME' or 'last NAME'")
        (first if kind == "first" else last).append(name)
    leaked = (set(first) | set(last)) & set(HELDOUT_NAMES)
    if leaked:
        raise RuntimeError(f"{WIDE_NAMES_FILE} names held-out names: {sorted(leaked)[:5]}")
    return tuple(sorted(set(first))), tuple(sorted(set(last)))


def write_wide_names(path: Path = WIDE_NAMES_FILE) -> tuple[int, int]:
    """Rebuild the wide list from Faker's person providers (needs ``pip install faker``).

    Names are folded to ASCII and lowercased; kept if they match ``[a-z]{2,14}`` (with at most
    one inner apostrophe), are not core or held-out names, and do not sound like a held-out name
    (eSpeak NG phonemes equal, stress marks ignored, in en-us or en-gb). Returns the counts.
    """
    import importlib
    import unicodedata

    import faker

    from train.corpus import espeak

    def fold(s: str) -> str:
        return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower().strip()

    first: set[str] = set()
    last: set[str] = set()
    for loc in _FAKER_LOCALES:
        provider = importlib.import_module(f"faker.providers.person.{loc}").Provider
        for attr, out in (
            ("first_names", first),
            ("first_names_male", first),
            ("first_names_female", first),
            ("last_names", last),
        ):
            for n in getattr(provider, attr, None) or ():
                n = fold(n)
                if _NAME_RE.match(n):
                    out.add(n)

    def sound(name: str, accent: str) -> str:
        return espeak.phonemes(name, accent).replace("'", "").replace(",", "")

    core = set(PERSON_NAMES) | set(DEVICE_NAMES)
    banned = {sound(n, a) for n in HELDOUT_NAMES for a in ("en-us", "en-gb")}
    keep: dict[str, list[str]] = {"first": [], "last": []}
    for kind, pool in (("first", first), ("last", last)):
        for n in sorted(pool - core):
            if not any(sound(n, a) in banned for a in ("en-us", "en-gb")):
                keep[kind].append(n)
    header = [
        "# Wide name list for training utterances (train.corpus.names.wide_names).",
        f"# Written by `python -m train.corpus.names` from Faker {faker.VERSION} person providers:",
        "# " + " ".join(_FAKER_LOCALES),
        "# No core name, no held-out name, no name pronounced like a held-out name.",
    ]
    lines = [f"{k} {n}" for k in ("first", "last") for n in keep[k]]
    Path(path).write_text("\n".join(header + lines) + "\n")
    return len(keep["first"]), len(keep["last"])


if __name__ == "__main__":
    nf, nl = write_wide_names()
    print(f"wrote {WIDE_NAMES_FILE}: {nf} given names, {nl} surnames")
