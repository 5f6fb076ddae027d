"""The audit REST service (a later issue builds it)."""
