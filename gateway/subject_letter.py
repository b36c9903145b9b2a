"""The answer to an access request (GDPR 15), in words a non-specialist reads, fr or en.

GDPR 12(1) wants the answer "concise, transparent, intelligible"; KASPR was fined for foreign
information and for not naming sources. So every fact is said in a sentence in the person's
language, every source is named with its date, and every message is listed with its date,
sender, subject and outcome. Article 15(1) items are all there: the data (a-b), who received
it (c), how long it is kept (d), the rights (e-f), the source (g).
"""

from __future__ import annotations

import datetime
import textwrap
import time

from gateway.model import Contact, PolicyKnobs
from gateway.policy.rules import retention_deadline
from gateway.settings import ControllerSettings
from gateway.store.ledger import ContactEvent
from gateway.store.subject import Decision, HeldCopy, SubjectRecord, SubjectRequest
from gateway.text import printable

LANGUAGES = ("en", "fr")
WIDTH = 76  # plain-text mail lines (RFC 5322 2.1.1 recommends 78 at most)

_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Your personal data held by {controller}",
        "greeting": "Dear {name},",
        "sir": "Sir or Madam",
        "intro": ("You asked what personal data we hold about the address {address}. This is "
                  "all of it, as of {today}."),
        "nothing": "We hold no personal data about this address.",
        "facts": "1. What we know about you",
        "sources": "2. Where your address came from",
        "choices": "3. Your consent and your choices",
        "mail": "4. Messages sent to you, or that we decided not to send",
        "why": "5. Why we use these data and for how long",
        "rights": "6. Your rights",
        "requests": "Your requests",
        "name": "Name", "job_title": "Job title", "language": "Language",
        "kind_person": "Address: a personal address",
        "kind_role": "Address: a generic address of an organisation",
        "audience_b2b": "Used in a professional capacity",
        "audience_b2c": "Used as a private person",
        "customer": "You are a customer", "prospect": "You are a prospect (not a customer)",
        "topics": "Professional topics", "categories": "Products you bought",
        "collected": "First collected on {date}",
        "acted": "Your last action (reply, click, purchase, form) on {date}",
        "informed": "Privacy information sent to you on {date}",
        "source": "{name} ({type}), first recorded on {date}",
        "source_public": "; the information was public",
        "source_restricted": "; the information was restricted to your contacts",
        "no_source": "No source is recorded.",
        "no_events": "No consent, objection or other action is recorded.",
        "suppressed": ("Since {date} you receive no more prospecting messages through us "
                       "({channel}). This stays so."),
        "no_mail": "No message has been sent to you through us.",
        "sent_on_behalf": "{date}, on behalf of {account}: {subject} \u2014 {outcome}",
        "quoted": "\u201c{subject}\u201d",
        "purpose": ("Purpose: sending you commercial prospecting e-mail on behalf of: "
                    "{accounts}."),
        "purpose_none": "Purpose: sending commercial prospecting e-mail.",
        "kept_until": ("These data are kept until {date} at the latest, unless you act "
                       "before (a reply, a click, a purchase); they are then deleted."),
        "kept_rule": ("These data are kept {days} days from collection or from your last "
                      "action, then deleted."),
        "rights_text": ("You can at any time object to these messages (the unsubscribe link "
                        "in each of them works at once), ask us to correct or erase these data, "
                        "or to restrict their use. Write to {dpo}. Our privacy policy: "
                        "{privacy}. You may also complain to your data protection authority "
                        "(in France, the CNIL: www.cnil.fr)."),
        "request": "{kind} request received on {received}, answered by {due} at the latest{closed}",
        "closed": " (answered on {date})",
        "request_access": "Access", "request_erasure": "Erasure",
        "request_objection": "Objection",
        "erased": "Your data were erased on {date} at your request; only a coded trace remains, "
                  "so that we never write to you again.",
        "signature": "{controller}, {address}",
        "colon": ":", "a_message": "a message",
    },
    "fr": {
        "title": "Vos données personnelles détenues par {controller}",
        "greeting": "Bonjour {name},",
        "sir": "Madame, Monsieur",
        "intro": ("Vous avez demandé quelles données personnelles nous détenons sur l'adresse "
                  "{address}. Les voici toutes, à la date du {today}."),
        "nothing": "Nous ne détenons aucune donnée personnelle sur cette adresse.",
        "facts": "1. Ce que nous savons de vous",
        "sources": "2. D'où vient votre adresse",
        "choices": "3. Votre consentement et vos choix",
        "mail": "4. Les messages envoyés, ou que nous avons décidé de ne pas envoyer",
        "why": "5. Pourquoi nous utilisons ces données et combien de temps",
        "rights": "6. Vos droits",
        "requests": "Vos demandes",
        "name": "Nom", "job_title": "Fonction", "language": "Langue",
        "kind_person": "Adresse : une adresse personnelle",
        "kind_role": "Adresse : une adresse générique d'une organisation",
        "audience_b2b": "Utilisée dans un cadre professionnel",
        "audience_b2c": "Utilisée à titre privé",
        "customer": "Vous êtes client", "prospect": "Vous êtes prospect (pas client)",
        "topics": "Domaines professionnels", "categories": "Produits achetés",
        "collected": "Collectée pour la première fois le {date}",
        "acted": "Votre dernière action (réponse, clic, achat, formulaire) le {date}",
        "informed": "Information sur vos données envoyée le {date}",
        "source": "{name} ({type}), enregistrée pour la première fois le {date}",
        "source_public": " ; l'information était publique",
        "source_restricted": " ; l'information était réservée à vos contacts",
        "no_source": "Aucune source n'est enregistrée.",
        "no_events": "Aucun consentement, opposition ou autre action n'est enregistré.",
        "suppressed": ("Depuis le {date}, vous ne recevez plus de prospection par notre "
                       "intermédiaire ({channel}). Cela reste ainsi."),
        "no_mail": "Aucun message ne vous a été envoyé par notre intermédiaire.",
        "sent_on_behalf": "{date}, pour le compte de {account} : {subject} \u2014 {outcome}",
        "quoted": "« {subject} »",
        "purpose": ("Finalité : vous adresser de la prospection commerciale par courriel pour "
                    "le compte de : {accounts}."),
        "purpose_none": "Finalité : l'envoi de prospection commerciale par courriel.",
        "kept_until": ("Ces données sont conservées au plus tard jusqu'au {date}, sauf action "
                       "de votre part avant (réponse, clic, achat) ; elles sont ensuite "
                       "supprimées."),
        "kept_rule": ("Ces données sont conservées {days} jours à compter de leur collecte ou "
                      "de votre dernière action, puis supprimées."),
        "rights_text": ("Vous pouvez à tout moment vous opposer à ces messages (le lien de "
                        "désinscription de chacun d'eux agit immédiatement), demander la "
                        "rectification ou l'effacement de ces données, ou la limitation de leur "
                        "usage. Écrivez à {dpo}. Notre politique de confidentialité : "
                        "{privacy}. Vous pouvez aussi adresser une réclamation à la CNIL "
                        "(www.cnil.fr)."),
        "request": ("Demande {kind} reçue le {received}, réponse au plus tard le "
                    "{due}{closed}"),
        "closed": " (répondue le {date})",
        "request_access": "d'accès", "request_erasure": "d'effacement",
        "request_objection": "d'opposition",
        "erased": ("Vos données ont été effacées le {date} à votre demande ; seule une trace "
                   "codée est gardée, pour ne plus jamais vous écrire."),
        "signature": "{controller}, {address}",
        "colon": " :", "a_message": "un message",
    },
}

_SOURCE_TYPES = {
    "en": {"direct": "collected by us directly", "partner": "a partner, with your consent",
           "broker": "a data broker", "public_directory": "a public directory",
           "social_network": "a social network", "import": "an imported list"},
    "fr": {"direct": "collectée directement par nous",
           "partner": "un partenaire, avec votre consentement",
           "broker": "un courtier en données", "public_directory": "un annuaire public",
           "social_network": "un réseau social", "import": "une liste importée"},
}
_EVENTS = {
    "en": {"consent": "you gave your consent", "withdrawal": "you withdrew your consent",
           "objection": "you objected to prospecting",
           "objection_lifted": "your objection was lifted at your request",
           "interaction": "you interacted with us",
           "information": "you received the information on your data"},
    "fr": {"consent": "vous avez donné votre consentement",
           "withdrawal": "vous avez retiré votre consentement",
           "objection": "vous vous êtes opposé à la prospection",
           "objection_lifted": "votre opposition a été levée à votre demande",
           "interaction": "vous avez interagi avec nous",
           "information": "vous avez reçu l'information sur vos données"},
}
_CHANNELS = {
    "en": {"import": "recorded from a file", "manual": "recorded by hand",
           "one-click": "one-click unsubscribe", "link": "unsubscribe page",
           "mailto": "unsubscribe e-mail", "webhook": "reported by the sending tool",
           "notice": "in the notice at the end of a message we sent",
           "erasure": "erasure request"},
    "fr": {"import": "enregistré depuis un fichier", "manual": "enregistré à la main",
           "one-click": "désinscription en un clic", "link": "page de désinscription",
           "mailto": "courriel de désinscription", "webhook": "signalé par l'outil d'envoi",
           "notice": "dans la notice en bas d'un message envoyé",
           "erasure": "demande d'effacement"},
}
# What became of a message, by decision and by the state of its copy.
_OUTCOMES = {
    "en": {"sent": "delivered", "queued": "being delivered", "deferred": "being delivered",
           "failed": "not delivered", "reject": "not sent ({why})",
           "quarantine": "held for review by a person ({why})", "allow": "accepted for sending"},
    "fr": {"sent": "remis", "queued": "en cours d'envoi", "deferred": "en cours d'envoi",
           "failed": "non remis", "reject": "non envoyé ({why})",
           "quarantine": "retenu pour examen par une personne ({why})",
           "allow": "accepté pour envoi"},
}
# The rule of a refusal or hold, in plain words (the ids are in COMPLIANCE.md).
_WHY = {
    "en": {"R1": "you had objected", "R2": "we hold no record of your address",
           "R3": "the source of your address is not allowed",
           "R4": "the retention period of your data was over",
           "R9": "the link with your profession had to be checked",
           "R10": "there was no valid basis to write to you",
           "M1": "the sender could not be identified", "M2": "the message was malformed",
           "M3": "the message lacked the required information"},
    "fr": {"R1": "vous vous étiez opposé", "R2": "nous n'avions aucune trace de votre adresse",
           "R3": "la source de votre adresse n'est pas admise",
           "R4": "la durée de conservation de vos données était dépassée",
           "R9": "le lien avec votre profession devait être vérifié",
           "R10": "aucune base valable ne permettait de vous écrire",
           "M1": "l'expéditeur n'était pas identifiable", "M2": "le message était mal formé",
           "M3": "le message ne portait pas les informations requises"},
}


def language_for(record: SubjectRecord, default: str) -> str:
    """The contact's language when we write it (fr, en), else the controller's default."""
    for contact, _ in record.contacts:
        tag = (contact.language or "").split("-")[0].lower()
        if tag in LANGUAGES:
            return tag
    tag = default.split("-")[0].lower()
    return tag if tag in LANGUAGES else "en"


class Letter:
    """Builds the text answer line by line; every stored value goes through `printable`."""

    def __init__(self, lang: str, controller: ControllerSettings, knobs: PolicyKnobs) -> None:
        self.lang = lang
        self.w = _WORDS[lang]
        self.controller = controller
        self.knobs = knobs
        self.lines: list[str] = []

    def day(self, stamp: float | None) -> str:
        if stamp is None:
            return "?"
        moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
        return moment.strftime("%d/%m/%Y" if self.lang == "fr" else "%Y-%m-%d")

    def say(self, key: str, **values: object) -> str:
        clean = {k: printable(str(v)) if isinstance(v, str) else v for k, v in values.items()}
        return self.w[key].format(**clean)

    def section(self, key: str) -> None:
        self.lines += ["", self.w[key], "-" * len(self.w[key])]

    def paragraph(self, text: str) -> None:
        self.lines += textwrap.wrap(text, WIDTH, break_on_hyphens=False) or [""]

    def bullet(self, text: str) -> None:
        self.lines += textwrap.wrap(text, WIDTH, initial_indent="  - ", subsequent_indent="    ",
                                    break_on_hyphens=False)

    def item(self, label: str, value: str) -> None:
        self.bullet(f"{self.w[label]}{self.w['colon']} {printable(value)}")

    def render(self, record: SubjectRecord, now: float) -> str:
        w, c = self.w, self.controller
        first = next((ct.first_name for ct, _ in record.contacts if ct.first_name), None)
        self.lines = [self.say("title", controller=c.name), "",
                      self.say("greeting", name=first or w["sir"]), ""]
        self.paragraph(self.say("intro", address=record.address, today=self.day(now)))
        for stamp in record.erased_at:
            self.lines.append("")
            self.paragraph(self.say("erased", date=self.day(stamp)))
        if not record.holds_anything:
            self.lines.append("")
            self.paragraph(w["nothing"])
        for contact, events in record.contacts:
            self.facts(contact)
            self.sources(contact)
            self.choices(events, record)
        if not record.contacts and record.suppressed_at is not None:
            self.choices([], record)
        self.mail(record.decisions, record.quarantine)
        self.why(record)
        self.requests(record.requests)
        self.section("rights")
        self.paragraph(self.say("rights_text", dpo=c.dpo_email, privacy=c.privacy_url))
        self.lines += ["", self.say("signature", controller=c.name, address=c.address), ""]
        return "\n".join(self.lines)

    def facts(self, contact: Contact) -> None:
        w = self.w
        self.section("facts")
        name = " ".join(p for p in (contact.first_name, contact.last_name) if p)
        if name:
            self.item("name", name)
        if contact.job_title:
            self.item("job_title", contact.job_title)
        if contact.language:
            self.item("language", contact.language)
        self.bullet(w[f"kind_{contact.kind}"])
        self.bullet(w[f"audience_{contact.audience}"])
        self.bullet(w[contact.relationship])
        if contact.topics:
            self.item("topics", ", ".join(sorted(contact.topics)))
        if contact.customer_categories:
            self.item("categories", ", ".join(sorted(contact.customer_categories)))
        if contact.collected_at is not None:
            self.bullet(self.say("collected", date=self.day(contact.collected_at)))
        if contact.last_interaction_at is not None:
            self.bullet(self.say("acted", date=self.day(contact.last_interaction_at)))
        if contact.informed_at is not None:
            self.bullet(self.say("informed", date=self.day(contact.informed_at)))

    def sources(self, contact: Contact) -> None:
        self.section("sources")
        if not contact.sources:
            self.bullet(self.w["no_source"])
        for source in contact.sources:
            text = self.say("source", name=source.name,
                            type=_SOURCE_TYPES[self.lang].get(source.type, source.type),
                            date=self.day(source.recorded_at))
            if source.visibility in ("public", "restricted"):
                text += self.w[f"source_{source.visibility}"]
            self.bullet(text)

    def choices(self, events: list[ContactEvent], record: SubjectRecord) -> None:
        self.section("choices")
        for event in events:
            what = _EVENTS[self.lang].get(event.kind, event.kind)
            text = f"{self.day(event.occurred_at)}{self.w['colon']} {what}"
            channel = _CHANNELS[self.lang].get(event.channel, event.channel)
            details = [d for d in (channel, event.method, event.wording, event.proof,
                                   event.ip and f"IP {event.ip}") if d]
            if details:
                text += f" ({printable('; '.join(details))})"
            self.bullet(text)
        if record.suppressed_at is not None:
            channel = record.suppression_channel or "?"
            self.bullet(self.say("suppressed", date=self.day(record.suppressed_at),
                                 channel=_CHANNELS[self.lang].get(channel, channel)))
        elif not events:
            self.bullet(self.w["no_events"])

    def mail(self, decisions: list[Decision], held: list[HeldCopy]) -> None:
        self.section("mail")
        outcomes, why = _OUTCOMES[self.lang], _WHY[self.lang]
        if not decisions and not held:
            self.bullet(self.w["no_mail"])
        states: dict[str | None, str] = {h.message_id: h.state for h in held}
        for d in decisions:
            if d.delivery is not None:
                outcome = outcomes[d.delivery]
            elif d.decision == "reject" or states.get(d.message_id) == "rejected":
                outcome = outcomes["reject"].format(why=why.get(d.rule, d.rule))
            elif d.decision == "quarantine" and states.get(d.message_id, "held") == "held":
                outcome = outcomes["quarantine"].format(why=why.get(d.rule, d.rule))
            else:
                outcome = outcomes["allow"]
            subject = (self.say("quoted", subject=d.subject) if d.subject
                       else self.w["a_message"])
            self.bullet(self.say("sent_on_behalf", date=self.day(d.at), account=d.account or "?",
                                 subject=subject, outcome=f"{outcome} [{d.rule}]"))

    def why(self, record: SubjectRecord) -> None:
        self.section("why")
        accounts = sorted({d.account for d in record.decisions if d.account})
        self.paragraph(self.say("purpose", accounts=", ".join(accounts)) if accounts
                       else self.w["purpose_none"])
        deadlines = [retention_deadline(ct, self.knobs) for ct, _ in record.contacts]
        known = [d for d in deadlines if d is not None]
        if known:
            self.paragraph(self.say("kept_until", date=self.day(max(known))))
        else:
            self.paragraph(self.say("kept_rule", days=self.knobs.prospect_retention_days))

    def requests(self, requests: list[SubjectRequest]) -> None:
        if not requests:
            return
        self.section("requests")
        for r in requests:
            closed = self.say("closed", date=self.day(r.closed_at)) if r.closed_at else ""
            self.bullet(self.say("request", kind=self.w[f"request_{r.kind}"],
                                 received=self.day(r.received_at), due=self.day(r.due_at),
                                 closed=closed))


def render_text(record: SubjectRecord, controller: ControllerSettings, knobs: PolicyKnobs,
                lang: str | None = None, now: float | None = None) -> str:
    """The letter answering an access request about `record.address`."""
    chosen = lang or language_for(record, controller.default_language)
    return Letter(chosen, controller, knobs).render(record, now or time.time())
