import datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.problem import Problem
from ...models.tenant_state import TenantState
from ...types import UNSET, Response, Unset


def _get_kwargs(
    id: UUID,
    *,
    at_position: int | Unset = UNSET,
    at: datetime.datetime | Unset = UNSET,
) -> dict[str, Any]:
    params: dict[str, Any] = {}

    params["at_position"] = at_position

    json_at: str | Unset = UNSET
    if not isinstance(at, Unset):
        json_at = at.isoformat()
    params["at"] = json_at

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/tenants/{id}/state".format(
            id=quote(str(id), safe=""),
        ),
        "params": params,
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> Problem | TenantState | None:
    if response.status_code == 200:
        response_200 = TenantState.from_dict(response.json())

        return response_200

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
) -> Response[Problem | TenantState]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    id: UUID,
    *,
    client: AuthenticatedClient,
    at_position: int | Unset = UNSET,
    at: datetime.datetime | Unset = UNSET,
) -> Response[Problem | TenantState]:
    """A tenant as it was at a position of the log or a time, deleted tenants included (admin, auditor, own
    tenant)

     The tenant's stream folded up to its last event at or before `at_position` (a global position) or
    `at` (RFC 3339); give exactly one. 404 before the tenant was created.

    Args:
        id (UUID):
        at_position (int | Unset):
        at (datetime.datetime | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | TenantState]
    """

    kwargs = _get_kwargs(
        id=id,
        at_position=at_position,
        at=at,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    id: UUID,
    *,
    client: AuthenticatedClient,
    at_position: int | Unset = UNSET,
    at: datetime.datetime | Unset = UNSET,
) -> Problem | TenantState | None:
    """A tenant as it was at a position of the log or a time, deleted tenants included (admin, auditor, own
    tenant)

     The tenant's stream folded up to its last event at or before `at_position` (a global position) or
    `at` (RFC 3339); give exactly one. 404 before the tenant was created.

    Args:
        id (UUID):
        at_position (int | Unset):
        at (datetime.datetime | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | TenantState
    """

    return sync_detailed(
        id=id,
        client=client,
        at_position=at_position,
        at=at,
    ).parsed


async def asyncio_detailed(
    id: UUID,
    *,
    client: AuthenticatedClient,
    at_position: int | Unset = UNSET,
    at: datetime.datetime | Unset = UNSET,
) -> Response[Problem | TenantState]:
    """A tenant as it was at a position of the log or a time, deleted tenants included (admin, auditor, own
    tenant)

     The tenant's stream folded up to its last event at or before `at_position` (a global position) or
    `at` (RFC 3339); give exactly one. 404 before the tenant was created.

    Args:
        id (UUID):
        at_position (int | Unset):
        at (datetime.datetime | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[Problem | TenantState]
    """

    kwargs = _get_kwargs(
        id=id,
        at_position=at_position,
        at=at,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    id: UUID,
    *,
    client: AuthenticatedClient,
    at_position: int | Unset = UNSET,
    at: datetime.datetime | Unset = UNSET,
) -> Problem | TenantState | None:
    """A tenant as it was at a position of the log or a time, deleted tenants included (admin, auditor, own
    tenant)

     The tenant's stream folded up to its last event at or before `at_position` (a global position) or
    `at` (RFC 3339); give exactly one. 404 before the tenant was created.

    Args:
        id (UUID):
        at_position (int | Unset):
        at (datetime.datetime | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Problem | TenantState
    """

    return (
        await asyncio_detailed(
            id=id,
            client=client,
            at_position=at_position,
            at=at,
        )
    ).parsed
