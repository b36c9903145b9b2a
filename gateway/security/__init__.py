"""Account security: password policy and password hashing."""
