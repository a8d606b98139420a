"""Customer signing: envelopes, their recipients, the mailer and the signing listener (issue 14).

A rule with signers turns a job into an envelope once the document is rendered; the envelope lives in
the outbox like a job (persisted states, due times for reminders and expiry). The listener never talks
to Salesforce and the mailer never signs: both read and write the outbox. `model` holds the vocabulary
every part shares.
"""
