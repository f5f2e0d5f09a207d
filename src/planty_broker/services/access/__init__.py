"""The API's own credentials: API tokens with scopes (`tokens`) and the pairing of the
broker with a user's account (`pairing`).

May import what `services` may.
"""
