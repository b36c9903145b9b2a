"""The password policy (CNIL deliberation 2022-100, COMPLIANCE §7) and argon2id hashing."""

from __future__ import annotations

import asyncio
import math
import random
import string
import unicodedata

import pytest
from argon2 import PasswordHasher, extract_parameters, profiles

from gateway.security.passwords import (
    MIN_BITS,
    dummy_hash,
    hash_password,
    hash_password_async,
    needs_rehash,
    password_problem,
    verify_password,
    verify_password_async,
)

STRONG = "Kq7pLm2Xz9Rb4W"  # 14 characters of upper case, lower case and digits: 83.4 bits


def random_password(rng: random.Random, length: int, classes: list[str]) -> str:
    """A random password of `length` that uses every one of `classes`."""
    alphabet = "".join(classes)
    while True:
        candidate = "".join(rng.choice(alphabet) for _ in range(length))
        if all(any(ch in cls for ch in candidate) for cls in classes):
            return candidate


FOUR_CLASSES = [string.ascii_lowercase, string.ascii_uppercase, string.digits, string.punctuation]


def test_min_bits_is_cnil_80():
    assert MIN_BITS == 80


# --- CNIL's examples are accepted ---------------------------------------------------------


@pytest.mark.parametrize("password", [
    "Tr0ub4dor&3x",  # 12 characters, all four classes
    "x9#Qm!2vLp$K",  # 12 characters, all four classes
    STRONG,  # 14 characters of upper case, lower case and digits
    "correct horse battery staple orange river mountain",  # a passphrase of 7 words
    "Correct-Horse-Battery-Staple-42!",  # the e2e tests' account password
    "déjàvuçaplaît",  # 13 characters, lower case and non-ASCII: 13 × log2(126) = 90.7 bits
])
def test_cnil_examples_are_accepted(password: str):
    assert password_problem(password) is None


def test_twelve_characters_of_four_classes_pass_though_the_formula_gives_78_8_bits():
    # CNIL's own table counts this case as 80 bits.
    assert 12 * math.log2(95) < MIN_BITS
    assert password_problem("Tr0ub4dor&3x") is None


@pytest.mark.parametrize(("length", "classes"), [
    (12, FOUR_CLASSES),
    (14, FOUR_CLASSES[:3]),
    (18, FOUR_CLASSES[:1]),  # 18 × log2(26) = 84.6 bits
])
def test_random_passwords_of_cnil_strength_are_all_accepted(length: int, classes: list[str]):
    # The sequence and repeat checks must not refuse what a password generator makes.
    rng = random.Random(f"{length}-{len(classes)}")
    for _ in range(300):
        password = random_password(rng, length, classes)
        assert password_problem(password) is None, password


def test_seven_word_passphrases_are_accepted():
    words = ("river orange mountain lamp violin harbour pepper castle meadow copper "
             "falcon window garden silver thunder basket").split()
    rng = random.Random(7)
    for _ in range(200):
        phrase = " ".join(rng.sample(words, 7))
        assert password_problem(phrase) is None, phrase


# --- below CNIL's examples: refused with the bits it has ----------------------------------


@pytest.mark.parametrize(("password", "bits"), [
    ("a", 4),
    ("Abc123!", 45),
    ("Tr0ub4dor&3", 72),  # 11 characters of four classes
    ("Kq7pLm2Xz9Rb4", 77),  # 13 characters of upper case, lower case and digits
    ("Kq7pLm2Xz9Rb", 71),  # 12 characters, but only three classes
    ("an ox is at my do go", 65),  # 7 words, but spaces count for nothing: 14 lower case
    ("Purple Tiger8", 71),  # counting the space as a symbol would make it 12 of four classes
])
def test_weak_passwords_are_refused_with_their_bits(password: str, bits: int):
    problem = password_problem(password)
    assert problem is not None
    assert problem.startswith(f"too weak: {bits} bits of entropy, at least 80 needed")


@pytest.mark.parametrize(("password", "problem"), [
    ("", "empty"),
    ("    ", "only spaces"),
])
def test_empty_passwords_are_refused(password: str, problem: str):
    assert password_problem(password) == problem


def test_a_password_longer_than_the_limit_is_refused():
    rng = random.Random(1024)
    longest = random_password(rng, 1024, FOUR_CLASSES)
    assert password_problem(longest) is None
    assert password_problem(longest + "x") == "too long: 1025 characters, at most 1024"


# --- refused whatever their length --------------------------------------------------------


@pytest.mark.parametrize("bad", ["\0", "\r", "\n", "\t", "\x7f", "\x85", "\u200b", "\u2028",
                                 "\ud800"])
def test_control_and_invisible_characters_are_refused(bad: str):
    problem = password_problem(STRONG + bad + STRONG)
    assert problem is not None and problem.startswith("contains a control")


@pytest.mark.parametrize(("password", "name"), [
    ("Acme-Mailer-2024-Spring!", "acme"),
    ("Acme-Mailer-2024-Spring!", "ACME"),
    ("x9#Qm!2vLp$Kcrm", "crm"),
])
def test_a_password_containing_the_account_name_is_refused(password: str, name: str):
    assert password_problem(password, name=name) == "contains the account name"


def test_a_name_shorter_than_three_characters_is_not_looked_for():
    assert password_problem(STRONG, name="Kq") is None


@pytest.mark.parametrize("password", [
    "aaaaaaaaaaaaaaaaaaaa",
    "Ab1!Ab1!Ab1!Ab1!",
    "abababababababababababab",
])
def test_repetitive_passwords_are_refused(password: str):
    problem = password_problem(password)
    assert problem is not None and problem.startswith("too repetitive: only ")


@pytest.mark.parametrize("password", [
    "abcdefghijklmnopqrstu",  # 98.7 bits by the formula alone
    "9876543210zyxwvutsrq",
    "qwertyuiopasdfghjklzxcvbnm",
    "azertyuiopqsdfghjklmwxcvbn",
    "1qaz2wsx3edc4rfv5tgb6yhn",
    "Abc1!Abc1!Abc1!",
    "Xk9#mQ2$Xk9#mQ2$",
    "!@#$%^&*()Qwerty",
])
def test_sequences_keyboard_walks_and_repeated_blocks_are_refused(password: str):
    problem = password_problem(password)
    assert problem is not None and problem.startswith("too predictable")


@pytest.mark.parametrize("password", [
    "Password123!",  # "password" with digits and a symbol
    "P@ssw0rd12345!",  # l33t spelling undone
    "!!Dragon2024##",  # symbols and digits on both sides
    "Lhbjkjubz2957704",  # itself in the list (case aside), and 95 bits by the formula
    "Sunshine#1987!",
])
def test_common_passwords_dressed_up_are_refused(password: str):
    problem = password_problem(password)
    assert problem is not None and problem.startswith("too common")


@pytest.mark.parametrize(("password", "problem"), [
    ("Summer2024!x", "too guessable"),  # 12 of four classes: a season, a year, a symbol
    ("Letmein!2024ok", "too guessable"),
    ("Password1234!x", "too guessable"),
    ("correcthorsebatterystaple", "a passphrase needs 7"),  # 4 words: 117 bits by count
    ("strawberry strawberry chocolate butterfly", "a passphrase needs 7"),  # a word repeated
    ("welcome welcome Password Dragon Monkey", "a passphrase needs 7"),
    ("internationalization extraordinarily uncharacteristically "  # 78 characters
     "counterrevolutionaries", "a passphrase needs 7"),
    ("\uff30assword123!!", "too common"),  # full-width P: "Password123!!" to a guesser
])
def test_common_words_inside_enough_characters_are_refused(password: str, problem: str):
    assert problem in (password_problem(password) or "accepted")


def test_the_policy_reads_the_nfc_form():
    decomposed = unicodedata.normalize("NFD", "déjàvuçaplaît")
    assert decomposed != "déjàvuçaplaît"
    assert password_problem(decomposed) is None


@pytest.mark.parametrize("password", ["\ufdfa", "\u2487\u3371\u247d\u3388", "\ufdfa\ufdfb"])
def test_characters_nfkc_expands_count_as_typed(password: str):
    """NFKC makes 18 letters of one typed character (U+FDFA): a 1-character password
    passed the 80 bits, and SMTP AUTH took it."""
    assert len(unicodedata.normalize("NFKC", password)) >= 12
    problem = password_problem(password)
    assert problem is not None and problem.startswith("too weak"), problem


# --- hashing -----------------------------------------------------------------------------


def test_hash_and_verify_round_trip():
    stored = hash_password(STRONG)
    assert stored.startswith("$argon2id$")
    assert STRONG not in stored
    assert verify_password(stored, STRONG)
    assert not verify_password(stored, STRONG + "x")
    assert not verify_password(stored, STRONG.lower())


def test_each_hash_has_its_own_salt():
    assert hash_password(STRONG) != hash_password(STRONG)


def test_hashes_use_rfc_9106_low_memory_parameters():
    assert extract_parameters(hash_password(STRONG)) == profiles.RFC_9106_LOW_MEMORY


def test_the_same_text_in_nfd_and_nfc_verifies():
    stored = hash_password(unicodedata.normalize("NFD", "déjàvuçaplaît"))
    assert verify_password(stored, unicodedata.normalize("NFC", "déjàvuçaplaît"))


@pytest.mark.parametrize("garbage", [
    "",
    "not a hash",
    "$2b$12$abcdefghijklmnopqrstuuABCDEFGHIJKLMNOPQRSTUVWXYZ01234",  # bcrypt
    "$argon2id$v=19$m=65536,t=3,p=4$!!!$!!!",
])
def test_an_unreadable_hash_verifies_false_without_raising(garbage: str):
    assert verify_password(garbage, STRONG) is False


def test_a_lone_surrogate_verifies_false_without_raising():
    assert verify_password(hash_password(STRONG), "\ud800") is False


def test_needs_rehash_for_other_parameters_or_an_unreadable_hash():
    assert needs_rehash(hash_password(STRONG)) is False
    weaker = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1).hash(STRONG)
    assert verify_password(weaker, STRONG)  # an old hash still lets its owner in...
    assert needs_rehash(weaker) is True  # ...and is to be replaced
    assert needs_rehash("not a hash") is True


def test_dummy_hash_is_a_hash_like_ours_that_nothing_matches():
    dummy = dummy_hash()
    assert dummy is dummy_hash()  # computed once
    assert extract_parameters(dummy) == profiles.RFC_9106_LOW_MEMORY
    assert not needs_rehash(dummy)
    assert not verify_password(dummy, "")
    assert not verify_password(dummy, STRONG)


async def test_async_variants_hash_and_verify():
    stored = await hash_password_async(STRONG)
    assert await verify_password_async(stored, STRONG) is True
    assert await verify_password_async(stored, "wrong") is False
    assert await verify_password_async("garbage", STRONG) is False


async def test_async_verify_leaves_the_event_loop_free():
    stored = hash_password(STRONG)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)  # let the ticker start before verifying
    ticks = 0
    assert await verify_password_async(stored, STRONG)
    during = ticks
    done.set()
    await task
    assert during >= 5  # argon2 takes ~0.1 s; a blocking call would allow none
