"""Bearer tokens for automation: ``Authorization: Bearer ipt_<prefix>_<secret>``.

A token acts as its user, so it reaches exactly the tenants that user belongs to today; removing
someone from a tenant takes their tokens' access with it. Tokens are never logged or echoed.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from endpoints.models import ApiToken


class TokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        parts = authentication.get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            return None  # not ours: let session authentication try
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("malformed Authorization header: use 'Bearer <token>'")
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked token") from None
        token = ApiToken.objects.authenticate(raw)
        if token is None:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked token")
        return (token.user, token)

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) to unauthenticated requests.
        return f'{self.keyword} realm="api"'


class TokenAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "endpoints.api.authentication.TokenAuthentication"
    name = "tokenAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from POST /api/v1/tokens/ or `manage.py issue_token`.",
        }
