"""Account passwords: the CNIL strength policy, and argon2id hashing off the event loop.

Policy (COMPLIANCE §7, CNIL deliberation 2022-100): a password must carry at least 80 bits of
entropy as CNIL computes it, length × log2(size of the alphabet spanned by the character classes
used), and must not be a well-known leaked password. CNIL's examples are the acceptance tests:
12 characters mixing upper case, lower case, digits and symbols; 14 of upper case, lower case and
digits; a passphrase of 7 words or more.

The hash takes the password in Unicode NFC form, so that the same typed text always gives the
same bytes (RFC 8265, OpaqueString profile); the policy reads its NFKC form (a full-width
letter is the letter). Beyond CNIL's count of characters, zxcvbn's estimate of the guesses
needed must reach 10^10: a common word dressed up with a year and a symbol has the characters
but not the strength.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib
import math
import secrets
import string
import unicodedata

from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError

MIN_BITS = 80
# zxcvbn's guess estimate must reach its top score (10^10 guesses): no random password of
# CNIL's strength falls below it (the lowest of 6,000 generated was 10^10.5)
MIN_GUESSES_LOG10 = 10
PASSPHRASE_WORDS = 7  # CNIL: a passphrase of 7 words or more
_ESTIMATE_CHARS = 72  # zxcvbn's limit (its matching grows fast with the length)
_MAX_LENGTH = 1024  # characters; far beyond any passphrase, short of a denial of service

# CNIL's classes: 26 lower, 26 upper, 10 digits, 33 specials (its figure: ASCII punctuation
# and space, 95 printable ASCII in all; spaces themselves are not counted, see below). CNIL
# gives no figure for other characters: we count anything outside ASCII (é, ß, ж, emoji, ...)
# as one extra class of 100 symbols, a round figure between the few accented letters of a
# European keyboard and the whole of Unicode.
_LOWER, _UPPER, _DIGIT, _SPECIAL, _OTHER = "lower", "upper", "digit", "special", "other"
_CLASS_SIZES = {_LOWER: 26, _UPPER: 26, _DIGIT: 10, _SPECIAL: 33, _OTHER: 100}
_ALL_FOUR = frozenset({_LOWER, _UPPER, _DIGIT, _SPECIAL})

# Walks along a keyboard row or column (QWERTY, AZERTY, QWERTZ and the shifted digit row).
_KEYBOARD_LINES = (
    "`1234567890-=", "qwertyuiop[]\\", "asdfghjkl;'", "zxcvbnm,./", "~!@#$%^&*()_+",
    "azertyuiop", "qsdfghjklm", "wxcvbn", "qwertzuiop", "yxcvbnm",
    "1qaz", "2wsx", "3edc", "4rfv", "5tgb", "6yhn", "7ujm", "8ik,", "9ol.", "0p;/",
)
_LEET = str.maketrans({"@": "a", "4": "a", "0": "o", "3": "e", "$": "s", "5": "s", "7": "t",
                       "+": "t", "8": "b", "9": "g"})

_WEAK_HINT = ("e.g. 12 characters mixing upper case, lower case, digits and symbols, or 14 of "
              "upper case, lower case and digits, or a passphrase of 7+ words of 3+ letters")

# RFC 9106's second recommended profile (argon2id, t=3, m=64 MiB, p=4), pinned rather than
# taken from argon2-cffi's defaults so that a library upgrade cannot silently change it (and
# needs_rehash() notices when we do). It is above OWASP's minimum (m=19 MiB, t=2, p=1); one hash
# takes about 0.1 s on one core.
_HASHER = PasswordHasher.from_parameters(profiles.RFC_9106_LOW_MEMORY)


def password_problem(password: str, *, name: str = "") -> str | None:
    """Why `password` is refused for account `name`, in words for the operator; None if fine."""
    text = unicodedata.normalize("NFC", password)
    if not text:
        return "empty"
    if len(text) > _MAX_LENGTH:
        return f"too long: {len(text)} characters, at most {_MAX_LENGTH}"
    if any(_is_control(ch) for ch in text):
        return "contains a control or invisible character (such as NUL, tab, CR or LF)"
    # A space between words adds nothing an attacker has to guess, though CNIL's formula would
    # count it as a whole class of 33 symbols ("Hello World1" would then pass on 4 classes).
    # The checks read the NFKC form: a full-width "Ｐassword" is "Password" to a guesser.
    compact = "".join(unicodedata.normalize("NFKC", text).split())
    if not compact:
        return "only spaces"
    folded = compact.casefold()
    account = "".join(name.split()).casefold()
    if len(account) >= 3 and account in folded:
        return "contains the account name"
    # The strength is counted on both forms and the weaker is taken: NFKC turns one typed
    # character into up to 18 ("ﷺ"), and a 1-character password passed as 18 letters.
    typed = "".join(text.split())
    bits, strong = min(_entropy(typed), _entropy(compact))
    if not strong:
        return f"too weak: {int(bits)} bits of entropy, at least {MIN_BITS} needed ({_WEAK_HINT})"
    distinct = len(set(folded))
    if distinct < 5:
        return f"too repetitive: only {distinct} different character{'s' if distinct > 1 else ''}"
    if 2 * _predictable_chars(folded) >= len(folded):
        return ("too predictable: mostly repeats, sequences or keyboard walks "
                "(like 'aaaa', 'abcd', 'qwerty')")
    if _is_common(folded):
        return ("too common: a well-known leaked password, or one dressed up with digits, "
                "symbols or l33t spelling")
    return _guessable(compact, name)


def _entropy(compact: str) -> tuple[float, bool]:
    """CNIL's count for `compact` (no spaces): (bits, strong enough)."""
    classes = {_char_class(ch) for ch in compact}
    bits = len(compact) * math.log2(sum(_CLASS_SIZES[c] for c in classes))
    # CNIL's own table counts 12 characters of all four classes as 80 bits, though
    # 12 × log2(95) is 78.8: its example must pass, so it is accepted as such.
    return bits, bits >= MIN_BITS or (len(compact) >= 12 and _ALL_FOUR <= classes)


def _guessable(compact: str, name: str) -> str | None:
    """zxcvbn's estimate, for what the character count misses: common words, names, dates
    and patterns inside the password ("Summer2024!x", "Letmein!2024ok"). zxcvbn reads 72
    characters at most: a longer password is read in pieces for its words."""
    zxcvbn = importlib.import_module("zxcvbn").zxcvbn  # no type information; loaded on use
    inputs = [name] if name else []
    results = [zxcvbn(compact[i:i + _ESTIMATE_CHARS], user_inputs=inputs,
                      max_length=_ESTIMATE_CHARS)
               for i in range(0, len(compact), _ESTIMATE_CHARS)]
    words: set[str] = set()  # distinct: a word said twice is one word to a guesser
    covered = 0
    for result in results:
        for match in result["sequence"]:
            found = [match] if match["pattern"] == "dictionary" else \
                match.get("base_matches", []) if match["pattern"] == "repeat" else []
            if found and all(m["pattern"] == "dictionary" for m in found):
                words.update(m.get("matched_word", m["token"]).lower() for m in found)
                covered += len(match["token"])
    if len(words) < PASSPHRASE_WORDS and covered >= 0.9 * len(compact):
        return (f"too guessable: {len(words)} common word{'s' if len(words) != 1 else ''} "
                f"and little else; a passphrase needs {PASSPHRASE_WORDS} different words or "
                "more")
    guesses = results[0]["guesses_log10"]
    if guesses < MIN_GUESSES_LOG10:
        return (f"too guessable: common words, names, dates or patterns make it about "
                f"10^{guesses:.0f} guesses, at least 10^{MIN_GUESSES_LOG10} needed "
                f"({_WEAK_HINT})")
    return None


def hash_password(password: str) -> str:
    """An argon2id hash (PHC string, random salt) of `password`, to store."""
    return _HASHER.hash(_secret(password))


def verify_password(stored_hash: str, password: str) -> bool:
    """True only if `password` matches; False on a mismatch or an unreadable hash."""
    try:
        return _HASHER.verify(stored_hash, _secret(password))
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    """True if the hash was made with other parameters (or cannot be read): store a new one."""
    try:
        return _HASHER.check_needs_rehash(stored_hash)
    except InvalidHashError:
        return True


async def hash_password_async(password: str) -> str:
    """hash_password() in a worker thread: argon2 would stall every other SMTP session."""
    return await asyncio.to_thread(hash_password, password)


async def verify_password_async(stored_hash: str, password: str) -> bool:
    """verify_password() in a worker thread: argon2 would stall every other SMTP session."""
    return await asyncio.to_thread(verify_password, stored_hash, password)


@functools.cache
def dummy_hash() -> str:
    """A well-formed hash, with our parameters, that no password matches.

    Checking a login for an unknown user against it costs the same as a real check, so timing
    does not tell which users exist. It is assembled from random salt and tag rather than
    hashed, so the first call does not spend 0.1 s of CPU on the event loop.
    """
    p = profiles.RFC_9106_LOW_MEMORY

    def b64(size: int) -> str:
        return base64.b64encode(secrets.token_bytes(size)).decode("ascii").rstrip("=")

    return (f"$argon2id$v={p.version}$m={p.memory_cost},t={p.time_cost},p={p.parallelism}"
            f"${b64(p.salt_len)}${b64(p.hash_len)}")


def _secret(password: str) -> bytes:
    # surrogatepass: a lone surrogate (refused by the policy) must not raise in verify_password.
    return unicodedata.normalize("NFC", password).encode("utf-8", "surrogatepass")


def _is_control(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


def _char_class(ch: str) -> str:
    if ch in string.ascii_lowercase:
        return _LOWER
    if ch in string.ascii_uppercase:
        return _UPPER
    if ch in string.digits:
        return _DIGIT
    if ch in string.punctuation:
        return _SPECIAL
    return _OTHER


@functools.cache
def _common_passwords() -> frozenset[str]:
    """zxcvbn's 30,000 most frequent leaked passwords (lower case, shipped with the package)."""
    # Imported on first use, as only account creation needs the list; through importlib as
    # zxcvbn ships no type information.
    lists = importlib.import_module("zxcvbn.frequency_lists").FREQUENCY_LISTS
    return frozenset(str(entry) for entry in lists["passwords"])


def _is_common(folded: str) -> bool:
    """The password, or its letters once digits and symbols around them are stripped and
    l33t spelling undone ("P@ssw0rd2024!" → "password"), is a well-known leaked password."""
    core = folded
    while core and not core[0].isalpha():
        core = core[1:]
    while core and not core[-1].isalpha():
        core = core[:-1]
    plain = core.translate(_LEET)
    candidates = {folded, core, plain.replace("1", "i"), plain.replace("1", "l")}
    return not _common_passwords().isdisjoint(candidates)


def _steps(a: str, b: str) -> set[tuple[str | int, ...]]:
    """How b can predictably follow a: same character, next or previous code point, or the
    next key left or right on one keyboard line."""
    found: set[tuple[str | int, ...]] = set()
    if a == b:
        found.add(("same",))
    if abs(ord(b) - ord(a)) == 1:
        found.add(("code", ord(b) - ord(a)))
    for line, keys in enumerate(_KEYBOARD_LINES):
        i, j = keys.find(a), keys.find(b)
        if i >= 0 and j >= 0 and abs(j - i) == 1:
            found.add(("key", line, j - i))
    return found


def _predictable_chars(folded: str) -> int:
    """How many characters merely continue a pattern: 3+ characters that repeat earlier text
    count for nothing, a run of 3+ going on in one direction (aaa, abc, 987, qwe, 1qaz) for its
    first character only. Random passwords stay far below half (1/3 at worst in 200,000 of 12
    characters); so do passphrases (0.4 at worst in 20,000 of 7 dictionary words)."""
    predictable = 0
    i = 0
    while i < len(folded):
        repeat = 0  # longest text from i already seen before (overlapping, as in "aaaa")
        while i + repeat < len(folded) and folded[i:i + repeat + 1] in folded[:i + repeat]:
            repeat += 1
        run = 1  # longest stretch from i going on in one direction
        directions: set[tuple[str | int, ...]] = set()
        while i + run < len(folded):
            step = _steps(folded[i + run - 1], folded[i + run])
            directions = step if run == 1 else directions & step
            if not directions:
                break
            run += 1
        if repeat >= 3 and repeat >= run - 1:
            predictable += repeat  # a copy: nothing in it is new
            i += repeat
        elif run >= 3:
            predictable += run - 1  # the first character of a run is new, the rest follow
            i += run
        else:
            i += 1
    return predictable
