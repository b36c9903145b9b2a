"""Notice templates: the bundled ones (gateway/notices/<lang>.toml), each replaceable by a
file of the same name in `[controller] notices_dir`. Checked at start: a template with a
missing or empty text, a bad placeholder, or a text without the placeholder of what it must
say (MUST_NAME: the unsubscribe link, the privacy link, the controller ...) stops the gateway
with the file and key named."""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path

from gateway.errors import ConfigError
from gateway.transform.notice import WHY, NoticeFacts, NoticeTemplate, render

REQUIRED = ("intro", "controller", "why_other", "source", "retention", "rights", "privacy",
            "unsubscribe", "full", *WHY.values())
# What COMPLIANCE 4.2 says every notice carries, by the text that carries it: an operator's
# wording may say it any way it likes, but not leave it out (a template whose `unsubscribe`
# read "reply STOP" loaded, and every copy went out with no link to object with)
MUST_NAME = {
    "controller": ("{controller}", "{controller_address}"),
    "source": ("{sources}",),
    "retention": ("{retention_years}",),
    "privacy": ("{privacy_url}",),
    "unsubscribe": ("{unsubscribe_url}",),
    "why_R6": ("{consent_date}",),
}
SAMPLE = NoticeFacts("Controller", "https://example.org", "https://example.org/privacy",
                     "dpo@example.org", 3, "https://example.org/u/x", "R6", "2026-01-01",
                     ("a source",), full=True)


def load_templates(override_dir: str = "") -> dict[str, NoticeTemplate]:
    texts: dict[str, tuple[str, str]] = {}
    for entry in resources.files("gateway").joinpath("notices").iterdir():
        if entry.name.endswith(".toml"):
            texts[entry.name[:-5]] = (entry.read_text(encoding="utf-8"), f"bundled {entry.name}")
    if override_dir:
        folder = Path(override_dir)
        if not folder.is_dir():
            raise ConfigError(f"controller.notices_dir: not a folder: {override_dir}")
        for path in sorted(folder.glob("*.toml")):
            texts[path.stem] = (path.read_text(encoding="utf-8"), str(path))
    templates = {}
    for language, (text, where) in texts.items():
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"notice template {where}: {exc}") from None
        missing = [key for key in REQUIRED if not isinstance(raw.get(key), str)]
        if missing or not isinstance(raw.get("version"), str):
            raise ConfigError(f"notice template {where}: missing {', '.join(missing) or 'version'}")
        blank = [key for key in REQUIRED if not raw[key].strip()]
        if blank:
            raise ConfigError(f"notice template {where}: empty {', '.join(blank)} (COMPLIANCE "
                              "4.2: every notice says it)")
        for key, names in MUST_NAME.items():
            left_out = [name for name in names if name not in raw[key]]
            if left_out:
                raise ConfigError(f"notice template {where}: {key} must contain "
                                  f"{' and '.join(left_out)} (COMPLIANCE 4.2: every notice "
                                  "carries it)")
        template = NoticeTemplate(language, raw["version"],
                                  {k: v for k, v in raw.items() if isinstance(v, str)})
        for rule in (*WHY, "R9"):
            try:
                render(template, NoticeFacts(**{**vars(SAMPLE), "rule": rule}))
            except (KeyError, ValueError, IndexError) as exc:
                raise ConfigError(f"notice template {where}: bad placeholder {exc}") from None
        templates[language.lower()] = template  # as `choose` looks tags up
    return templates
