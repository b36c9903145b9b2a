"""The answer to an access request (GDPR 15), in words a non-specialist reads, de, en, es, fr
or it.

GDPR 12(1) wants the answer "concise, transparent, intelligible"; KASPR was fined for foreign
information and for not naming sources. So every fact is said in a sentence in the person's
language, every source is named with its date, and every message is listed with its date,
sender, subject and outcome. Article 15(1) items are all there: the data (a-b), who received
it (c), how long it is kept (d), the rights (e-f), the source (g).
"""

from __future__ import annotations

import datetime
import re
import textwrap
import time

import idna

from gateway.model import Contact, PolicyKnobs
from gateway.policy.rules import retention_deadline
from gateway.settings import ControllerSettings
from gateway.store.ledger import ContactEvent
from gateway.store.subject import Decision, HeldCopy, SubjectRecord, SubjectRequest
from gateway.text import printable

LANGUAGES = ("de", "en", "es", "fr", "it")
_DATE_FORMATS = {"de": "%d.%m.%Y", "es": "%d/%m/%Y", "fr": "%d/%m/%Y", "it": "%d/%m/%Y"}
WIDTH = 76  # plain-text mail lines (RFC 5322 2.1.1 recommends 78 at most)

_WORDS: dict[str, dict[str, str]] = {
    "de": {
        "title": "Ihre bei {controller} gespeicherten personenbezogenen Daten",
        "greeting": "Guten Tag {name},",
        "sir": "Sehr geehrte Damen und Herren,",
        "intro": ("Sie haben Auskunft darüber verlangt, welche personenbezogenen Daten wir zur "
                  "Adresse {address} gespeichert haben. Nachfolgend finden Sie diese "
                  "vollständig (Stand: {today})."),
        "nothing": "Wir haben zu dieser Adresse keine personenbezogenen Daten gespeichert.",
        "facts": "1. Was wir über Sie wissen",
        "sources": "2. Woher Ihre Adresse stammt",
        "choices": "3. Ihre Einwilligung und Ihre Entscheidungen",
        "mail": "4. An Sie gesendete Nachrichten und solche, die wir nicht gesendet haben",
        "why": "5. Wofür wir diese Daten verwenden und wie lange",
        "rights": "6. Ihre Rechte",
        "requests": "Ihre Anträge",
        "name": "Name", "job_title": "Funktion", "language": "Sprache",
        "kind_person": "Adresse: eine Adresse, die Sie persönlich bezeichnet",
        "kind_role": "Adresse: eine allgemeine Adresse einer Organisation",
        "audience_b2b": "In beruflicher Eigenschaft verwendet",
        "audience_b2c": "Als Privatperson verwendet",
        "customer": "Sie sind Kunde", "prospect": "Sie sind Interessent (kein Kunde)",
        "topics": "Berufliche Themen", "categories": "Von Ihnen gekaufte Produkte",
        "collected": "Erstmals erfasst am {date}",
        "acted": "Ihre letzte Aktion (Antwort, Klick, Kauf, Formular) am {date}",
        "informed": "Datenschutzinformationen am {date} an Sie gesendet",
        "source": "{name} ({type}), erstmals erfasst am {date}",
        "source_public": "; die Angabe war öffentlich",
        "source_restricted": "; die Angabe war nur Ihren Kontakten zugänglich",
        "no_source": "Es ist keine Quelle erfasst.",
        "no_events": ("Es ist keine Einwilligung, kein Widerspruch und keine andere Aktion "
                      "erfasst."),
        "suppressed": ("Seit dem {date} erhalten Sie über uns keine Werbenachrichten mehr "
                       "({channel}). Dabei bleibt es."),
        "no_mail": "Über uns wurde Ihnen keine Nachricht gesendet.",
        "sent_on_behalf": "{date}, im Auftrag von {account}: {subject} \u2014 {outcome}",
        "quoted": "\u201e{subject}\u201c",
        "purpose": "Zweck: Zusendung von Werbe-E-Mails an Sie im Auftrag von: {accounts}.",
        "purpose_none": "Zweck: Versand von Werbe-E-Mails.",
        "kept_until": ("Diese Daten werden spätestens bis zum {date} gespeichert, sofern Sie "
                       "nicht vorher aktiv werden (eine Antwort, ein Klick, ein Kauf); danach "
                       "werden sie gelöscht."),
        "kept_rule": ("Diese Daten werden {days} Tage ab ihrer Erfassung oder ab Ihrer letzten "
                      "Aktion gespeichert und danach gelöscht."),
        "kept_expired": (
            "Die Speicherfrist dieser Daten ist am {date} abgelaufen: Sie sind zur "
            "Löschung vorgemerkt und werden bei der nächsten Bereinigung gelöscht."),
        "kept_hash": (
            "Ein verschlüsselter Fingerabdruck Ihrer Adresse wird ohne zeitliche "
            "Begrenzung auf unserer Sperrliste aufbewahrt, damit Sie keine "
            "Nachrichten mehr von uns erhalten."),
        "rights_text": ("Sie können diesen Nachrichten jederzeit widersprechen (der Link zum "
                        "Abbestellen in jeder Nachricht wirkt sofort) sowie die Berichtigung "
                        "oder Löschung dieser Daten oder die Einschränkung ihrer Verarbeitung "
                        "verlangen. Schreiben Sie an {dpo}. Unsere Datenschutzerklärung: "
                        "{privacy}. Sie können sich außerdem bei der zuständigen "
                        "Datenschutzaufsichtsbehörde beschweren (in Frankreich die CNIL: "
                        "www.cnil.fr)."),
        "request": ("{kind} eingegangen am {received}, Antwort spätestens am "
                    "{due}{closed}"),
        "closed": " (beantwortet am {date})",
        "request_note": "unser Vermerk",
        "extended": "Antwortfrist verlängert bis {date}, aus diesem Grund:",
        "request_access": "Auskunftsantrag", "request_erasure": "Löschantrag",
        "request_objection": "Widerspruch",
        "erased": ("Ihre Daten wurden am {date} auf Ihren Antrag gelöscht; nur ein codierter "
                   "Vermerk bleibt, damit wir Ihnen nie wieder schreiben."),
        "reviewer_note": "Vermerk der Prüfung",
        "told": ("Ihr Widerspruch wurde an die Versandwerkzeuge von {accounts} weitergegeben, "
                 "damit auch diese Sie nicht mehr anschreiben."),
        "purged": ("Ihre Daten wurden am {date} nach Ablauf ihrer Speicherfrist gelöscht "
                   "(gerechnet ab dem {start}). Aufbewahrt werden nur ein codierter Vermerk Ihrer "
                   "Adresse und dieses Datum, damit die Abmeldelinks bereits gesendeter "
                   "Nachrichten weiter funktionieren."),
        "told_pending": ("Ihr Widerspruch wird an die Versandwerkzeuge von {accounts} "
                         "weitergegeben (die Zustellung steht noch aus)."),
        "signature": "{controller}, {address}",
        "colon": ":", "a_message": "eine Nachricht",
    },
    "en": {
        "title": "Your personal data held by {controller}",
        "greeting": "Dear {name},",
        "sir": "Dear Sir or Madam,",
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
        "kind_person": "Address: an address that identifies you personally",
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
        "kept_expired": (
            "The retention period of these data ended on {date}: they are marked for "
            "deletion and will be erased at the next purge."),
        "kept_hash": (
            "A coded fingerprint of your address is kept without time limit on our "
            "do-not-contact list, so that you receive no more of our messages."),
        "rights_text": ("You can at any time object to these messages (the unsubscribe link "
                        "in each of them works at once), ask us to correct or erase these data, "
                        "or to restrict their processing. Write to {dpo}. Our privacy policy: "
                        "{privacy}. You may also complain to your data protection authority "
                        "(in France, the CNIL: www.cnil.fr)."),
        "request": "{kind} request received on {received}, answered by {due} at the latest{closed}",
        "closed": " (answered on {date})",
        "request_note": "our note",
        "extended": "answer period extended to {date}, for this reason:",
        "request_access": "Access", "request_erasure": "Erasure",
        "request_objection": "Objection",
        "erased": "Your data were erased on {date} at your request; only a coded trace remains, "
                  "so that we never write to you again.",
        "reviewer_note": "reviewer's note",
        "told": ("Your objection was passed on to the sending tools of {accounts}, so that "
                 "they stop writing to you too."),
        "purged": ("Your data were deleted on {date} at the end of their retention period "
                   "(counted from {start}). Only a coded trace of your address and that date "
                   "are kept, so that the unsubscribe links of messages already sent still "
                   "work."),
        "told_pending": ("Your objection is being passed on to the sending tools of "
                         "{accounts} (not delivered yet)."),
        "signature": "{controller}, {address}",
        "colon": ":", "a_message": "a message",
    },
    "es": {
        "title": "Sus datos personales en poder de {controller}",
        "greeting": "Estimado/a {name}:",
        "sir": "Estimado/a señor/a:",
        "intro": ("Ha solicitado conocer qué datos personales conservamos sobre la dirección "
                  "{address}. A continuación figuran todos, a fecha de {today}."),
        "nothing": "No conservamos ningún dato personal sobre esta dirección.",
        "facts": "1. Lo que sabemos de usted",
        "sources": "2. De dónde procede su dirección",
        "choices": "3. Su consentimiento y sus decisiones",
        "mail": "4. Mensajes que se le enviaron o que decidimos no enviar",
        "why": "5. Para qué utilizamos estos datos y durante cuánto tiempo",
        "rights": "6. Sus derechos",
        "requests": "Sus solicitudes",
        "name": "Nombre", "job_title": "Cargo", "language": "Idioma",
        "kind_person": "Dirección: una dirección nominativa (que le identifica)",
        "kind_role": "Dirección: una dirección genérica de una organización",
        "audience_b2b": "Utilizada en el ámbito profesional",
        "audience_b2c": "Utilizada a título particular",
        "customer": "Es usted cliente",
        "prospect": "Es usted cliente potencial (no es cliente)",
        "topics": "Ámbitos profesionales", "categories": "Productos que ha comprado",
        "collected": "Datos obtenidos por primera vez el {date}",
        "acted": "Su última acción (respuesta, clic, compra, formulario) el {date}",
        "informed": "Información sobre protección de datos enviada el {date}",
        "source": "{name} ({type}), registrada por primera vez el {date}",
        "source_public": "; la información era pública",
        "source_restricted": "; la información estaba restringida a sus contactos",
        "no_source": "No consta ninguna fuente.",
        "no_events": "No consta ningún consentimiento, oposición ni otra acción.",
        "suppressed": ("Desde el {date} ya no recibe mensajes de prospección comercial a "
                       "través de nosotros ({channel}). Así seguirá siendo."),
        "no_mail": "No se le ha enviado ningún mensaje a través de nosotros.",
        "sent_on_behalf": "{date}, en nombre de {account}: {subject} \u2014 {outcome}",
        "quoted": "«{subject}»",
        "purpose": ("Finalidad: enviarle correos electrónicos de prospección comercial en "
                    "nombre de: {accounts}."),
        "purpose_none": "Finalidad: el envío de correos electrónicos de prospección comercial.",
        "kept_until": ("Estos datos se conservan como máximo hasta el {date}, salvo que usted "
                       "actúe antes (una respuesta, un clic, una compra); después se "
                       "suprimen."),
        "kept_rule": ("Estos datos se conservan durante {days} días desde su obtención o desde "
                      "su última acción y después se suprimen."),
        "kept_expired": (
            "El plazo de conservación de estos datos terminó el {date}: están "
            "marcados para su supresión y se borrarán en la próxima depuración."),
        "kept_hash": (
            "Una huella cifrada de su dirección se conserva sin límite de tiempo en "
            "nuestra lista de exclusión, para que no reciba más mensajes nuestros."),
        "rights_text": ("Puede oponerse en cualquier momento a estos mensajes (el enlace para "
                        "darse de baja que figura en cada uno de ellos surte efecto de "
                        "inmediato), así como solicitar la rectificación o la supresión de "
                        "estos datos, o la limitación de su tratamiento. Escriba a {dpo}. "
                        "Nuestra política de privacidad: {privacy}. También puede presentar "
                        "una reclamación ante su autoridad de protección de datos (en Francia, "
                        "la CNIL: www.cnil.fr)."),
        "request": ("Solicitud {kind} recibida el {received}, con respuesta a más tardar el "
                    "{due}{closed}"),
        "closed": " (respondida el {date})",
        "request_note": "nuestra nota",
        "extended": "plazo de respuesta ampliado hasta el {date}, por el siguiente motivo:",
        "request_access": "de acceso", "request_erasure": "de supresión",
        "request_objection": "de oposición",
        "erased": ("Sus datos se suprimieron el {date} a petición suya; solo se conserva una "
                   "huella codificada, para no volver a escribirle nunca."),
        "reviewer_note": "nota de la revisión",
        "told": ("Su oposición se transmitió a las herramientas de envío de {accounts}, para "
                 "que tampoco ellas vuelvan a escribirle."),
        "purged": ("Sus datos se suprimieron el {date} al término de su plazo de conservación "
                   "(contado desde el {start}). Solo se conservan una huella codificada de su "
                   "dirección y esa fecha, para que los enlaces de baja de los mensajes ya "
                   "enviados sigan funcionando."),
        "told_pending": ("Su oposición se está transmitiendo a las herramientas de envío "
                         "de {accounts} (aún no entregada)."),
        "signature": "{controller}, {address}",
        "colon": ":", "a_message": "un mensaje",
    },
    "fr": {
        "title": "Vos données personnelles détenues par {controller}",
        "greeting": "Bonjour {name},",
        "sir": "Madame, Monsieur,",
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
        "kind_person": "Adresse : une adresse nominative (qui vous identifie)",
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
                       "intermédiaire ({channel}). Il en restera ainsi."),
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
        "kept_expired": (
            "La durée de conservation de ces données a pris fin le {date} : elles "
            "sont marquées pour suppression et seront effacées lors de la prochaine "
            "purge."),
        "kept_hash": (
            "Une empreinte codée de votre adresse est conservée sans limite de durée "
            "sur notre liste d'opposition, afin que vous ne receviez plus nos "
            "messages."),
        "rights_text": ("Vous pouvez à tout moment vous opposer à ces messages (le lien de "
                        "désinscription de chacun d'eux agit immédiatement), demander la "
                        "rectification ou l'effacement de ces données, ou la limitation de leur "
                        "traitement. Écrivez à {dpo}. Notre politique de confidentialité : "
                        "{privacy}. Vous pouvez aussi adresser une réclamation à une autorité de "
                        "protection des données (en France, la CNIL : www.cnil.fr)."),
        "request": ("Demande {kind} reçue le {received}, réponse au plus tard le "
                    "{due}{closed}"),
        "closed": " (réponse apportée le {date})",
        "request_note": "notre note",
        "extended": ("délai de réponse prolongé jusqu'au {date}, pour la raison "
                     "suivante :"),
        "request_access": "d'accès", "request_erasure": "d'effacement",
        "request_objection": "d'opposition",
        "erased": ("Vos données ont été effacées le {date} à votre demande ; seule une trace "
                   "codée est gardée, pour ne plus jamais vous écrire."),
        "reviewer_note": "note de l'examen",
        "told": ("Votre opposition a été transmise aux outils d'envoi de {accounts}, pour "
                 "qu'eux non plus ne vous écrivent plus."),
        "purged": ("Vos données ont été supprimées le {date}, au terme de leur durée de "
                   "conservation (comptée à partir du {start}). Seules une trace codée de "
                   "votre adresse et cette date sont gardées, pour que les liens de "
                   "désinscription des messages déjà envoyés fonctionnent toujours."),
        "told_pending": ("Votre opposition est en cours de transmission aux outils "
                         "d'envoi de {accounts} (pas encore remise)."),
        "signature": "{controller}, {address}",
        "colon": " :", "a_message": "un message",
    },
    "it": {
        "title": "I Suoi dati personali detenuti da {controller}",
        "greeting": "Gentile {name},",
        "sir": "Gentile Signora/Signore,",
        "intro": ("Lei ha chiesto quali dati personali conserviamo sull'indirizzo {address}. "
                  "Di seguito li trova tutti, aggiornati al {today}."),
        "nothing": "Non conserviamo alcun dato personale relativo a questo indirizzo.",
        "facts": "1. Che cosa sappiamo di Lei",
        "sources": "2. Da dove proviene il Suo indirizzo",
        "choices": "3. Il Suo consenso e le Sue scelte",
        "mail": "4. I messaggi inviati a Lei o che abbiamo deciso di non inviare",
        "why": "5. Perché utilizziamo questi dati e per quanto tempo",
        "rights": "6. I Suoi diritti",
        "requests": "Le Sue richieste",
        "name": "Nome", "job_title": "Qualifica", "language": "Lingua",
        "kind_person": "Indirizzo: un indirizzo nominativo (che La identifica)",
        "kind_role": "Indirizzo: un indirizzo generico di un'organizzazione",
        "audience_b2b": "Utilizzato in ambito professionale",
        "audience_b2c": "Utilizzato a titolo privato",
        "customer": "Lei è cliente", "prospect": "Lei è un potenziale cliente (non è cliente)",
        "topics": "Ambiti professionali", "categories": "Prodotti acquistati",
        "collected": "Dati raccolti per la prima volta il {date}",
        "acted": "La Sua ultima azione (risposta, clic, acquisto, modulo) il {date}",
        "informed": "Informativa sulla privacy inviata il {date}",
        "source": "{name} ({type}), registrata per la prima volta il {date}",
        "source_public": "; l'informazione era pubblica",
        "source_restricted": "; l'informazione era riservata ai Suoi contatti",
        "no_source": "Non risulta registrata alcuna fonte.",
        "no_events": "Non risulta registrato alcun consenso, opposizione o altra azione.",
        "suppressed": ("Dal {date} Lei non riceve più tramite noi messaggi di marketing diretto "
                       "({channel}). Resterà così."),
        "no_mail": "Tramite noi non Le è stato inviato alcun messaggio.",
        "sent_on_behalf": "{date}, per conto di {account}: {subject} \u2014 {outcome}",
        "quoted": "«{subject}»",
        "purpose": ("Finalità: inviarLe e-mail di marketing diretto per conto di: "
                    "{accounts}."),
        "purpose_none": "Finalità: l'invio di e-mail di marketing diretto.",
        "kept_until": ("Questi dati sono conservati al massimo fino al {date}, salvo una Sua "
                       "azione precedente (una risposta, un clic, un acquisto); sono poi "
                       "cancellati."),
        "kept_rule": ("Questi dati sono conservati per {days} giorni dalla raccolta o dalla Sua "
                      "ultima azione, poi cancellati."),
        "kept_expired": (
            "Il periodo di conservazione di questi dati è terminato il {date}: sono "
            "contrassegnati per la cancellazione e saranno eliminati alla prossima "
            "pulizia."),
        "kept_hash": (
            "Un'impronta cifrata del Suo indirizzo è conservata senza limiti di tempo"
            " nella nostra lista di esclusione, affinché Lei non riceva più i nostri "
            "messaggi."),
        "rights_text": ("Può opporsi in qualsiasi momento a questi messaggi (il link per "
                        "annullare l'iscrizione presente in ciascuno di essi ha effetto "
                        "immediato), chiedere la rettifica o la cancellazione di questi dati, "
                        "o la limitazione del loro trattamento. Scriva a {dpo}. La nostra "
                        "informativa sulla privacy: {privacy}. Può anche proporre reclamo "
                        "all'autorità di controllo competente per la protezione dei dati "
                        "(in Francia, la CNIL: www.cnil.fr)."),
        "request": ("Richiesta {kind} ricevuta il {received}, risposta entro il "
                    "{due}{closed}"),
        "closed": " (risposta inviata il {date})",
        "request_note": "nostra nota",
        "extended": "termine di risposta prorogato fino al {date}, per il seguente motivo:",
        "request_access": "di accesso", "request_erasure": "di cancellazione",
        "request_objection": "di opposizione",
        "erased": ("I Suoi dati sono stati cancellati il {date} su Sua richiesta; resta solo "
                   "una traccia codificata, affinché non Le scriviamo mai più."),
        "reviewer_note": "nota della revisione",
        "told": ("La Sua opposizione è stata trasmessa agli strumenti di invio di {accounts}, "
                 "affinché nemmeno loro Le scrivano più."),
        "purged": ("I Suoi dati sono stati cancellati il {date}, al termine del periodo di "
                   "conservazione (calcolato dal {start}). Restano solo una traccia codificata "
                   "del Suo indirizzo e questa data, affinché i link di disiscrizione dei "
                   "messaggi già inviati funzionino ancora."),
        "told_pending": ("La Sua opposizione è in corso di trasmissione agli strumenti di "
                         "invio di {accounts} (non ancora consegnata)."),
        "signature": "{controller}, {address}",
        "colon": ":", "a_message": "un messaggio",
    },
}

_SOURCE_TYPES = {
    "de": {"direct": "direkt von uns erhoben",
           "partner": "ein Partner, mit Ihrer Einwilligung",
           "broker": "ein Datenhändler", "public_directory": "ein öffentliches Verzeichnis",
           "social_network": "ein soziales Netzwerk", "import": "eine importierte Liste"},
    "en": {"direct": "collected by us directly", "partner": "a partner, with your consent",
           "broker": "a data broker", "public_directory": "a public directory",
           "social_network": "a social network", "import": "an imported list"},
    "es": {"direct": "obtenida directamente por nosotros",
           "partner": "un socio, con su consentimiento",
           "broker": "un intermediario de datos", "public_directory": "un directorio público",
           "social_network": "una red social", "import": "una lista importada"},
    "fr": {"direct": "collectée directement par nous",
           "partner": "un partenaire, avec votre consentement",
           "broker": "un courtier en données", "public_directory": "un annuaire public",
           "social_network": "un réseau social", "import": "une liste importée"},
    "it": {"direct": "raccolto direttamente da noi",
           "partner": "un partner, con il Suo consenso",
           "broker": "un intermediario di dati", "public_directory": "un elenco pubblico",
           "social_network": "un social network", "import": "un elenco importato"},
}
_EVENTS = {
    "de": {"consent": "Sie haben Ihre Einwilligung erteilt",
           "withdrawal": "Sie haben Ihre Einwilligung widerrufen",
           "objection": "Sie haben der Werbung widersprochen",
           "objection_lifted": "Ihr Widerspruch wurde auf Ihren Wunsch aufgehoben",
           "interaction": "Sie haben mit uns interagiert",
           "information": "Sie haben die Informationen zu Ihren Daten erhalten"},
    "en": {"consent": "you gave your consent", "withdrawal": "you withdrew your consent",
           "objection": "you objected to prospecting",
           "objection_lifted": "your objection was lifted at your request",
           "interaction": "you interacted with us",
           "information": "you received the information on your data"},
    "es": {"consent": "usted dio su consentimiento",
           "withdrawal": "usted retiró su consentimiento",
           "objection": "usted se opuso a la prospección comercial",
           "objection_lifted": "su oposición se dejó sin efecto a petición suya",
           "interaction": "usted interactuó con nosotros",
           "information": "usted recibió la información sobre sus datos"},
    "fr": {"consent": "vous avez donné votre consentement",
           "withdrawal": "vous avez retiré votre consentement",
           "objection": "vous avez exprimé votre opposition à la prospection",
           "objection_lifted": "votre opposition a été levée à votre demande",
           "interaction": "vous avez interagi avec nous",
           "information": "vous avez reçu l'information sur vos données"},
    "it": {"consent": "ha dato il Suo consenso",
           "withdrawal": "ha revocato il Suo consenso",
           "objection": "ha espresso opposizione al marketing diretto",
           "objection_lifted": "la Sua opposizione è stata revocata su Sua richiesta",
           "interaction": "ha interagito con noi",
           "information": "ha ricevuto l'informativa sui Suoi dati"},
}
_CHANNELS = {
    "de": {"import": "aus einer Datei übernommen", "manual": "von Hand erfasst",
           "one-click": "Abbestellen mit einem Klick", "link": "Seite zum Abbestellen",
           "mailto": "E-Mail zum Abbestellen", "webhook": "vom Versandsystem gemeldet",
           "notice": "im Hinweis am Ende einer von uns gesendeten Nachricht",
           "erasure": "Löschantrag"},
    "en": {"import": "recorded from a file", "manual": "recorded by hand",
           "one-click": "one-click unsubscribe", "link": "unsubscribe page",
           "mailto": "unsubscribe e-mail", "webhook": "reported by the sending tool",
           "notice": "in the notice at the end of a message we sent",
           "erasure": "erasure request"},
    "es": {"import": "registrado desde un archivo", "manual": "registrado manualmente",
           "one-click": "baja con un clic", "link": "página para darse de baja",
           "mailto": "correo electrónico para darse de baja",
           "webhook": "comunicado por la herramienta de envío",
           "notice": "en el aviso al final de un mensaje enviado por nosotros",
           "erasure": "solicitud de supresión"},
    "fr": {"import": "enregistré depuis un fichier", "manual": "enregistré à la main",
           "one-click": "désinscription en un clic", "link": "page de désinscription",
           "mailto": "courriel de désinscription", "webhook": "signalé par l'outil d'envoi",
           "notice": "dans la notice en bas d'un message envoyé",
           "erasure": "demande d'effacement"},
    "it": {"import": "registrato da un file", "manual": "registrato manualmente",
           "one-click": "annullamento dell'iscrizione con un clic",
           "link": "pagina di annullamento dell'iscrizione",
           "mailto": "e-mail di annullamento dell'iscrizione",
           "webhook": "segnalato dallo strumento di invio",
           "notice": "nell'avviso in fondo a un messaggio inviato da noi",
           "erasure": "richiesta di cancellazione"},
}
# What became of a message, by decision and by the state of its copy.
_OUTCOMES = {
    "de": {"sent": "zugestellt", "queued": "wird zugestellt", "deferred": "wird zugestellt",
           "failed": "nicht zugestellt", "reject": "nicht gesendet ({why})",
           "quarantine": "zur Prüfung durch eine Person zurückgehalten ({why})",
           "allow": "zum Versand angenommen",
           "no_message": "als Empfänger angenommen, doch keine Nachricht folgte: "
                         "nichts wurde gesendet"},
    "en": {"sent": "delivered", "queued": "being delivered", "deferred": "being delivered",
           "failed": "not delivered", "reject": "not sent ({why})",
           "quarantine": "held for review by a person ({why})", "allow": "accepted for sending",
           "no_message": "accepted as a recipient, but no message followed: nothing was sent"},
    "es": {"sent": "entregado", "queued": "en curso de entrega", "deferred": "en curso de entrega",
           "failed": "no entregado", "reject": "no enviado ({why})",
           "quarantine": "retenido para su revisión por una persona ({why})",
           "allow": "aceptado para su envío",
           "no_message": "aceptado como destinatario, pero no siguió ningún mensaje: "
                         "no se envió nada"},
    "fr": {"sent": "remis", "queued": "en cours d'envoi", "deferred": "en cours d'envoi",
           "failed": "non remis", "reject": "non envoyé ({why})",
           "quarantine": "retenu pour examen par une personne ({why})",
           "allow": "accepté pour envoi",
           "no_message": "accepté comme destinataire, mais aucun message n'a suivi : "
                         "rien n'a été envoyé"},
    "it": {"sent": "consegnato", "queued": "in consegna", "deferred": "in consegna",
           "failed": "non consegnato", "reject": "non inviato ({why})",
           "quarantine": "trattenuto per la verifica da parte di una persona ({why})",
           "allow": "accettato per l'invio",
           "no_message": "accettato come destinatario, ma non è seguito alcun messaggio: "
                         "non è stato inviato nulla"},
}
# The rule that let a message go, in plain words (the ids are in COMPLIANCE.md).
_ALLOWED = {
    "de": {"R5": "allgemeine Adresse einer Organisation",
           "R6": "auf Grundlage Ihrer Einwilligung", "R7": "als Kunde, für ähnliche Produkte",
           "R8": "Nachricht mit Bezug zu Ihrem Beruf", "T1": "Servicenachricht, keine Werbung",
           "R9": "von einer Person geprüft: mit Bezug zu Ihrem Beruf"},
    "en": {"R5": "generic address of an organisation", "R6": "on the basis of your consent",
           "R7": "as a customer, for similar products",
           "R8": "the message related to your profession",
           "T1": "service message, not advertising",
           "R9": "checked by a person: related to your profession"},
    "es": {"R5": "dirección genérica de una organización",
           "R6": "sobre la base de su consentimiento",
           "R7": "como cliente, para productos similares",
           "R8": "mensaje relacionado con su profesión",
           "T1": "mensaje de servicio, no publicitario",
           "R9": "revisado por una persona: relacionado con su profesión"},
    "fr": {"R5": "adresse générique d'une organisation", "R6": "sur la base de votre consentement",
           "R7": "en tant que client, pour des produits analogues",
           "R8": "message en lien avec votre profession",
           "T1": "message de service, non publicitaire",
           "R9": "vérifié par une personne : en lien avec votre profession"},
    "it": {"R5": "indirizzo generico di un'organizzazione", "R6": "sulla base del Suo consenso",
           "R7": "in quanto cliente, per prodotti analoghi",
           "R8": "messaggio legato alla Sua professione",
           "T1": "messaggio di servizio, non pubblicitario",
           "R9": "verificato da una persona: legato alla Sua professione"},
}
# The rule of a refusal or hold, in plain words (the ids are in COMPLIANCE.md).
_WHY = {
    "de": {"R1": "Ihre Adresse steht auf unserer Sperrliste",
           "R2": "wir hatten keinen Eintrag zu Ihrer Adresse",
           "R3": "die Quelle Ihrer Adresse ist nicht zulässig",
           "R4": "die Speicherfrist Ihrer Daten war abgelaufen",
           "R9": "der Bezug zu Ihrer beruflichen Tätigkeit musste geprüft werden",
           "R10": "es gab keine gültige Rechtsgrundlage, Ihnen zu schreiben",
           "M1": "der Absender war nicht identifizierbar",
           "M2": "die Nachricht war fehlerhaft aufgebaut",
           "M3": "der Nachricht fehlten Betreff oder Text",
           "OP": "ein Mitarbeiter hat die Nachricht vor dem Versand zurückgezogen"},
    "en": {"R1": "your address is on our do-not-contact list",
           "R2": "we hold no record of your address",
           "R3": "the source of your address is not allowed",
           "R4": "the retention period of your data was over",
           "R9": "the link with your profession had to be checked",
           "R10": "there was no valid basis to write to you",
           "M1": "the sender could not be identified", "M2": "the message was malformed",
           "M3": "the message had no subject or no text",
           "OP": "an operator withdrew the message before it was sent"},
    "es": {"R1": "su dirección figura en nuestra lista de exclusión",
           "R2": "no teníamos ningún registro de su dirección",
           "R3": "la fuente de su dirección no está admitida",
           "R4": "el plazo de conservación de sus datos había vencido",
           "R9": "debía comprobarse la relación con su actividad profesional",
           "R10": "no había ninguna base válida para escribirle",
           "M1": "no se pudo identificar al remitente", "M2": "el mensaje estaba mal formado",
           "M3": "el mensaje no tenía asunto o texto",
           "OP": "un operador retiró el mensaje antes de su envío"},
    "fr": {"R1": "votre adresse figure sur notre liste d'opposition",
           "R2": "nous n'avions aucune trace de votre adresse",
           "R3": "la source de votre adresse n'est pas admise",
           "R4": "la durée de conservation de vos données était dépassée",
           "R9": "le lien avec votre profession devait être vérifié",
           "R10": "aucune base valable ne permettait de vous écrire",
           "M1": "l'expéditeur n'était pas identifiable", "M2": "le message était mal formé",
           "M3": "le message n'avait pas d'objet ou pas de texte",
           "OP": "un opérateur a retiré le message avant son envoi"},
    "it": {"R1": "il Suo indirizzo è nella nostra lista di esclusione",
           "R2": "non avevamo alcuna registrazione del Suo indirizzo",
           "R3": "la fonte del Suo indirizzo non è ammessa",
           "R4": "il periodo di conservazione dei Suoi dati era scaduto",
           "R9": "il legame con la Sua attività professionale doveva essere verificato",
           "R10": "non esisteva una base valida per scriverLe",
           "M1": "non è stato possibile identificare il mittente",
           "M2": "il messaggio non era formato correttamente",
           "M3": "il messaggio non aveva oggetto o testo",
           "OP": "un operatore ha ritirato il messaggio prima dell'invio"},
}


def language_for(record: SubjectRecord, default: str) -> str:
    """The contact's language when we write it (de, en, es, fr, it), else the controller's
    default (else en)."""
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
        self.now = time.time()  # set again by render
        self.lines: list[str] = []

    def day(self, stamp: float | None) -> str:
        if stamp is None:
            return "?"
        moment = datetime.datetime.fromtimestamp(stamp, datetime.UTC)
        return moment.strftime(_DATE_FORMATS.get(self.lang, "%Y-%m-%d"))

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
        self.now = now
        first = next((ct.first_name for ct, _ in record.contacts if ct.first_name), None)
        self.lines = [self.say("title", controller=c.name), "",
                      self.say("greeting", name=first) if first else w["sir"], ""]
        self.paragraph(self.say("intro", address=readable(record.address),
                                today=self.day(now)))
        for stamp in record.erased_at:
            self.lines.append("")
            self.paragraph(self.say("erased", date=self.day(stamp)))
        for clock_start, purged_at in record.retention_purges:
            self.lines.append("")
            self.paragraph(self.say("purged", date=self.day(purged_at),
                                    start=self.day(clock_start)))
        if not record.holds_anything:
            self.lines.append("")
            self.paragraph(w["nothing"])
        for contact, events in record.contacts:
            self.facts(contact)
            self.sources(contact)
            self.choices(events, record)
        if not record.contacts and record.suppressed_at is not None:
            self.choices([], record)
        if record.holds_anything:  # else no mail, purpose or keeping period to tell of
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
        notes: dict[str | None, str | None] = {h.message_id: h.decision_reason for h in held}
        # a message refused after its RCPT (R1 at delivery: an objection made while it
        # waited; a held copy a reviewer rejected) is told once, with the refusal's reason:
        # its first line said "not delivered (related to your profession)"
        refused = {d.message_id for d in decisions if d.decision == "reject" and d.message_id}
        for d in decisions:
            if d.decision != "reject" and d.message_id in refused:
                continue
            if d.decision == "reject":
                outcome = outcomes["reject"].format(why=why.get(d.rule, d.rule))
            elif d.message_id is None:
                # a recipient accepted at RCPT in a transaction given up before its message
                # (or its message refused whole): "accepted for sending" told of mail never sent
                outcome = outcomes["no_message"]
            elif d.delivery is not None:
                outcome = outcomes[d.delivery]
            elif states.get(d.message_id) == "rejected":
                outcome = outcomes["reject"].format(why=why.get(d.rule, d.rule))
            elif d.decision == "quarantine" and states.get(d.message_id, "held") == "held":
                outcome = outcomes["quarantine"].format(why=why.get(d.rule, d.rule))
            else:
                outcome = outcomes["allow"]
            if d.decision == "allow" and d.message_id is not None \
                    and d.rule in _ALLOWED[self.lang]:
                outcome += f" ({_ALLOWED[self.lang][d.rule]})"  # why it could go
            note = notes.get(d.message_id) if states.get(d.message_id) == "rejected" else None
            if note:  # what the reviewer wrote of it is the person's data too
                outcome += f" ({self.w['reviewer_note']}{self.w['colon']} {printable(note)})"
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
        if known and max(known) < self.now:  # R4: refused since, purged at the next run
            self.paragraph(self.say("kept_expired", date=self.day(max(known))))
        elif known:
            self.paragraph(self.say("kept_until", date=self.day(max(known))))
        elif record.contacts:
            self.paragraph(self.say("kept_rule", days=self.knobs.prospect_retention_days))
        # GDPR 15(1)(c): who the data went to, and to whom they are on their way
        objections = [n for n in record.notifications if n.event == "objection"]
        told = sorted({n.account for n in objections if n.state == "sent"})
        pending = sorted({n.account for n in objections if n.state == "pending"} - set(told))
        if told:
            self.paragraph(self.say("told", accounts=", ".join(told)))
        if pending:
            self.paragraph(self.say("told_pending", accounts=", ".join(pending)))
        if record.suppressed_at is not None:  # never expires (COMPLIANCE.md 5)
            self.paragraph(self.w["kept_hash"])

    def requests(self, requests: list[SubjectRequest]) -> None:
        if not requests:
            return
        self.section("requests")
        for r in requests:
            closed = self.say("closed", date=self.day(r.closed_at)) if r.closed_at else ""
            text = self.say("request", kind=self.w[f"request_{r.kind}"],
                            received=self.day(r.received_at), due=self.day(r.due_at),
                            closed=closed)
            if r.note:  # GDPR 12(3): an extension is told "together with the reasons"
                text += f" ({self.w['request_note']}{self.w['colon']} {self.note(r.note)})"
            self.bullet(text)

    def note(self, note: str) -> str:
        """A request's note as the operator wrote it, but for the words RequestStore.extend
        puts in front of an extension's reason, said in the letter's language."""
        def extended(found: re.Match[str]) -> str:
            try:
                day = datetime.datetime.strptime(found.group(2), "%Y-%m-%d").replace(
                    tzinfo=datetime.UTC)
            except ValueError:
                return found.group()
            return f"{found.group(1)}{self.say('extended', date=self.day(day.timestamp()))} "
        return _EXTENDED.sub(extended, printable(note))


# what RequestStore.extend writes in a request's note ("; " joins a note to those before)
_EXTENDED = re.compile(r"(^|; )extended to (\d{4}-\d{2}-\d{2}): ")


def readable(address: str) -> str:
    """The address as its owner writes it: the domain in Unicode (the ledger keeps its
    A-labels, xn--...), else as stored."""
    local, at, domain = address.rpartition("@")
    if "xn--" not in domain.lower():
        return address
    try:
        return f"{local}{at}{idna.decode(domain)}"
    except idna.IDNAError:
        return address


def render_text(record: SubjectRecord, controller: ControllerSettings, knobs: PolicyKnobs,
                lang: str | None = None, now: float | None = None) -> str:
    """The letter answering an access request about `record.address`."""
    chosen = lang or language_for(record, controller.default_language)
    return Letter(chosen, controller, knobs).render(record, now or time.time())
