"""The embedded SMTP server the demo and the tests send mail to, not for production: aiosmtpd on 127.0.0.1
that keeps every accepted message as an .eml file, and a reader for those files.

It plays the org's relay as `localpki` plays a CA: with STARTTLS or implicit TLS (a certificate the caller
brings, issued by the local PKI), optional AUTH, and switches to reject a recipient or to be down, so the
mailer's failure paths run against a real server. It imports nothing of sfsign's, so the mailer and this
server cannot agree on a mistake; the demo and the tests wire the local PKI's certificate into it.
"""
