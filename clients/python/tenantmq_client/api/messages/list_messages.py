from http import HTTPStatus
from typing import Any
from uuid import UUID

import httpx

from ... import errors
from ...client import AuthenticatedClient, Client
from ...models.message_page import MessagePage
from ...models.problem import Problem
from ...types import UNSET, Response, Unset


def _get_kwargs(
    *,
    tenant_id: UUID | Unset = UNSET,
    cursor: str | Unset = UNSET,
    limit: int | Unset = UNSET,
) -> dict[str, Any]:
    params: dict[str, Any] = {}

    json_tenant_id: str | Unset = UNSET
    if not isinstance(tenant_id, Unset):
        json_tenant_id = str(tenant_id)
    params["tenant_id"] = json_tenant_id

    params["cursor"] = cursor

    params["limit"] = limit

    params = {k: v for k, v in params.items() if v is not UNSET and v is not None}

    _kwargs: dict[str, Any] = {
        "method": "get",
        "url": "/messages",
        "params": params,
    }

    return _kwargs


def _parse_response(
    *, client: AuthenticatedClient | Client, response: httpx.Response
) -> MessagePage | Problem | None:
    if response.status_code == 200:
        response_200 = MessagePage.from_dict(response.json())

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
) -> Response[MessagePage | Problem]:
    return Response(
        status_code=HTTPStatus(response.status_code),
        content=response.content,
        headers=response.headers,
        parsed=_parse_response(client=client, response=response),
    )


def sync_detailed(
    *,
    client: AuthenticatedClient,
    tenant_id: UUID | Unset = UNSET,
    cursor: str | Unset = UNSET,
    limit: int | Unset = UNSET,
) -> Response[MessagePage | Problem]:
    """Read a tenant's messages, oldest first, with a gap-free cursor

     A tenant token reads its own tenant (`tenant_id` may be left out); an admin names the tenant. Page
    to
    the end, then keep polling with the last page's `tail_cursor` (its `next_cursor` is null) to get new
    messages as they land: no message is skipped or repeated, even while workers commit out of order. A
    tenant's pages are read a few
    at a time (`read.max_concurrent_per_tenant`); one kept waiting by the database longer than
    `read.page_timeout` (10 s; a lock on the tenant's messages) answers 503.

    Args:
        tenant_id (UUID | Unset):
        cursor (str | Unset):
        limit (int | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[MessagePage | Problem]
    """

    kwargs = _get_kwargs(
        tenant_id=tenant_id,
        cursor=cursor,
        limit=limit,
    )

    response = client.get_httpx_client().request(
        **kwargs,
    )

    return _build_response(client=client, response=response)


def sync(
    *,
    client: AuthenticatedClient,
    tenant_id: UUID | Unset = UNSET,
    cursor: str | Unset = UNSET,
    limit: int | Unset = UNSET,
) -> MessagePage | Problem | None:
    """Read a tenant's messages, oldest first, with a gap-free cursor

     A tenant token reads its own tenant (`tenant_id` may be left out); an admin names the tenant. Page
    to
    the end, then keep polling with the last page's `tail_cursor` (its `next_cursor` is null) to get new
    messages as they land: no message is skipped or repeated, even while workers commit out of order. A
    tenant's pages are read a few
    at a time (`read.max_concurrent_per_tenant`); one kept waiting by the database longer than
    `read.page_timeout` (10 s; a lock on the tenant's messages) answers 503.

    Args:
        tenant_id (UUID | Unset):
        cursor (str | Unset):
        limit (int | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        MessagePage | Problem
    """

    return sync_detailed(
        client=client,
        tenant_id=tenant_id,
        cursor=cursor,
        limit=limit,
    ).parsed


async def asyncio_detailed(
    *,
    client: AuthenticatedClient,
    tenant_id: UUID | Unset = UNSET,
    cursor: str | Unset = UNSET,
    limit: int | Unset = UNSET,
) -> Response[MessagePage | Problem]:
    """Read a tenant's messages, oldest first, with a gap-free cursor

     A tenant token reads its own tenant (`tenant_id` may be left out); an admin names the tenant. Page
    to
    the end, then keep polling with the last page's `tail_cursor` (its `next_cursor` is null) to get new
    messages as they land: no message is skipped or repeated, even while workers commit out of order. A
    tenant's pages are read a few
    at a time (`read.max_concurrent_per_tenant`); one kept waiting by the database longer than
    `read.page_timeout` (10 s; a lock on the tenant's messages) answers 503.

    Args:
        tenant_id (UUID | Unset):
        cursor (str | Unset):
        limit (int | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        Response[MessagePage | Problem]
    """

    kwargs = _get_kwargs(
        tenant_id=tenant_id,
        cursor=cursor,
        limit=limit,
    )

    response = await client.get_async_httpx_client().request(**kwargs)

    return _build_response(client=client, response=response)


async def asyncio(
    *,
    client: AuthenticatedClient,
    tenant_id: UUID | Unset = UNSET,
    cursor: str | Unset = UNSET,
    limit: int | Unset = UNSET,
) -> MessagePage | Problem | None:
    """Read a tenant's messages, oldest first, with a gap-free cursor

     A tenant token reads its own tenant (`tenant_id` may be left out); an admin names the tenant. Page
    to
    the end, then keep polling with the last page's `tail_cursor` (its `next_cursor` is null) to get new
    messages as they land: no message is skipped or repeated, even while workers commit out of order. A
    tenant's pages are read a few
    at a time (`read.max_concurrent_per_tenant`); one kept waiting by the database longer than
    `read.page_timeout` (10 s; a lock on the tenant's messages) answers 503.

    Args:
        tenant_id (UUID | Unset):
        cursor (str | Unset):
        limit (int | Unset):

    Raises:
        errors.UnexpectedStatus: If the server returns an undocumented status code and Client.raise_on_unexpected_status is True.
        httpx.TimeoutException: If the request takes longer than Client.timeout.

    Returns:
        MessagePage | Problem
    """

    return (
        await asyncio_detailed(
            client=client,
            tenant_id=tenant_id,
            cursor=cursor,
            limit=limit,
        )
    ).parsed
