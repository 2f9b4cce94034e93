from http import HTTPStatus
from typing import Any

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.create_tenant_request import CreateTenantRequest
from ...models.problem import Problem
from ...models.tenant import Tenant
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    body: CreateTenantRequest,
    idempotency_key: str | Unset = UNSET,
) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    if not isinstance(idempotency_key, Unset):
        headers["Idempotency-Key"] = idempotency_key

    _kwargs: dict[str, Any] = {
        "method": "post",
        "url": "/tenants",
    }

    _kwargs["json"] = body.to_dict()

    headers["Content-Type"] = "application/json"

    _kwargs["headers"] = headers
    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Problem | Tenant | None:
    if response.status_code == 201:
        response_201 = Tenant.from_dict(response.json())

        return response_201

    if response.status_code == 400:
        response_400 = Problem.from_dict(response.json())

        return response_400

    if response.status_code == 401:
        response_401 = Problem.from_dict(response.json())

        return response_401

    if response.status_code == 403:
        response_403 = Problem.from_dict(response.json())

        return response_403

    if response.status_code == 404:
        response_404 = Problem.from_dict(response.json())

        return response_404

    if response.status_code == 408:
        response_408 = Problem.from_dict(response.json())

        return response_408

    if response.status_code == 409:
        response_409 = Problem.from_dict(response.json())

        return response_409

    if response.status_code == 413:
        response_413 = Problem.from_dict(response.json())

        return response_413

    if response.status_code == 415:
        response_415 = Problem.from_dict(response.json())

        return response_415

    if response.status_code == 500:
        response_500 = Problem.from_dict(response.json())

        return response_500

    if response.status_code == 503:
        response_503 = Problem.from_dict(response.json())

        return response_503

    if client.raise_on_unexpected_status:
        raise errors.UnexpectedStatus(response.status_code, response.content)
    else:
        return None


def _build_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Response[Problem | Tenant]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    body: CreateTenantRequest,
    idempotency_key: str | Unset = UNSET,
) -> Response[Problem | Tenant]:
    """Create a tenant (CreateTenant; admin)

     A create that may be sent again (its answer lost, a 503) either gives the tenant's `id`, and a
    second
    one answers 409, or sends an `Idempotency-Key`, and a second one with the same key and the same
    request
    answers 201 with the tenant as it is now.

    Args:
        idempotency_key (str | Unset):
        body (CreateTenantRequest): Create a tenant. Example: {'name': 'acme', 'workers': 3}.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | Tenant]
    """

    kwargs = _get_kwargs(
        body=body,
        idempotency_key=idempotency_key,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    body: CreateTenantRequest,
    idempotency_key: str | Unset = UNSET,
) -> Problem | Tenant | None:
    """Create a tenant (CreateTenant; admin)

     A create that may be sent again (its answer lost, a 503) either gives the tenant's `id`, and a
    second
    one answers 409, or sends an `Idempotency-Key`, and a second one with the same key and the same
    request
    answers 201 with the tenant as it is now.

    Args:
        idempotency_key (str | Unset):
        body (CreateTenantRequest): Create a tenant. Example: {'name': 'acme', 'workers': 3}.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | Tenant
    """

    return sync_detailed(
        client=client,
        body=body,
        idempotency_key=idempotency_key,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    body: CreateTenantRequest,
    idempotency_key: str | Unset = UNSET,
) -> Response[Problem | Tenant]:
    """Create a tenant (CreateTenant; admin)

     A create that may be sent again (its answer lost, a 503) either gives the tenant's `id`, and a
    second
    one answers 409, or sends an `Idempotency-Key`, and a second one with the same key and the same
    request
    answers 201 with the tenant as it is now.

    Args:
        idempotency_key (str | Unset):
        body (CreateTenantRequest): Create a tenant. Example: {'name': 'acme', 'workers': 3}.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | Tenant]
    """

    kwargs = _get_kwargs(
        body=body,
        idempotency_key=idempotency_key,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    body: CreateTenantRequest,
    idempotency_key: str | Unset = UNSET,
) -> Problem | Tenant | None:
    """Create a tenant (CreateTenant; admin)

     A create that may be sent again (its answer lost, a 503) either gives the tenant's `id`, and a
    second
    one answers 409, or sends an `Idempotency-Key`, and a second one with the same key and the same
    request
    answers 201 with the tenant as it is now.

    Args:
        idempotency_key (str | Unset):
        body (CreateTenantRequest): Create a tenant. Example: {'name': 'acme', 'workers': 3}.

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | Tenant
    """

    return (
        await asyncio_detailed(
            client=client,
            body=body,
            idempotency_key=idempotency_key,
        )
    ).parsed
