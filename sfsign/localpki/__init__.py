"""The local PKI the demo and the tests use, not for production: throw-away CAs and signer keys, the
RFC 3161 / OCSP / CRL services on 127.0.0.1 that the certificates name, and SoftHSM2 tokens.

It lives apart from `sfsign.documents` so that production signing code cannot come to depend on it:
nothing in `sfsign.documents` imports this package; real deployments bring their own certificate, TSA
and revocation services.
"""
