//! The OpenAPI 3.1 description, generated from the handlers' annotations
//! and the request/response types, so it cannot drift from the code.
//!
//! The failures every route shares come from the extractors, not from the
//! handler, so they are not written on each route (where one would be
//! forgotten) but added by [`complete`] from what each operation declares:
//! a bearer requirement can answer 401, a JSON body 400/413/415/422, a query
//! 400/422, a path id 404/422, and every `/v1` route touches the database, so
//! 503. Each is a shared definition under `components/responses`; where a
//! route documents the same status itself, the shared codes are appended to
//! its description. `api_description_documents_every_status` and the
//! schemathesis run in `.ci/api-fuzz` check the result against the server.

use std::collections::BTreeMap;
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Header, Ref, RefOr};
use utoipa::{Modify, OpenApi, PartialSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Parley REST api",
        description = "Accounts, sessions, rooms and messages. Live events are delivered by the gateway's WebSocket protocol (docs/protocol.md). Every error is `{\"error\": {\"code\", \"message\", \"field\"?}}`.",
        license(name = "MIT OR Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "rooms", description = "Rooms and membership"),
        (name = "messages", description = "Posting and history"),
        (name = "attachments", description = "Files posted with messages: upload, download, thumbnails"),
        (name = "users", description = "Accounts as others see them"),
        (name = "presence", description = "Who is online and who is in a room"),
        (name = "sse", description = "Tickets for the gateways' Server-Sent Events streams"),
        (name = "health", description = "Probes"),
        (name = "server", description = "The server publish api: backends publish custom events and signals with an API key"),
        (name = "admin", description = "Operator endpoints: for accounts with the admin role, or the PARLEY_ADMIN_TOKEN"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("An access token from login or refresh"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("pk_...")
                    .description(Some("An API key from POST /v1/admin/api-keys"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The server's PARLEY_ADMIN_TOKEN (an admin account uses its own access token)"))
                    .build(),
            ),
        );
    }
}

/// A failure shared by many routes: its component name, status, and the
/// codes it answers with (appended to a route's own text for that status).
struct Shared {
    name: &'static str,
    status: &'static str,
    codes: &'static str,
    retry_after: bool,
}

const INVALID_JSON: Shared = Shared {
    name: "InvalidJson",
    status: "400",
    codes: "`invalid_json`: the body is not JSON",
    retry_after: false,
};
const INVALID_QUERY: Shared = Shared {
    name: "InvalidQuery",
    status: "400",
    codes: "`invalid_query`: a query parameter of the wrong type",
    retry_after: false,
};
const UNAUTHORIZED: Shared = Shared {
    name: "Unauthorized",
    status: "401",
    codes: "`missing_token`, `invalid_token`, `token_expired` or `session_revoked`: \
            no valid access token of a live session",
    retry_after: false,
};
const PATH_NOT_FOUND: Shared = Shared {
    name: "PathNotFound",
    status: "404",
    codes: "`not_found`: a path id that does not parse names nothing",
    retry_after: false,
};
const PAYLOAD_TOO_LARGE: Shared = Shared {
    name: "PayloadTooLarge",
    status: "413",
    codes: "`payload_too_large`: a body over 64 KiB",
    retry_after: false,
};
const UNSUPPORTED_MEDIA_TYPE: Shared = Shared {
    name: "UnsupportedMediaType",
    status: "415",
    codes: "`unsupported_media_type`: a body without `Content-Type: application/json`",
    retry_after: false,
};
const INVALID_BODY: Shared = Shared {
    name: "InvalidBody",
    status: "422",
    codes: "`invalid_body` (a missing field, a wrong type, an unknown field) or \
            `validation_failed` (`field` names it; also for text with NUL or an unpaired surrogate)",
    retry_after: false,
};
const INVALID_QUERY_VALUE: Shared = Shared {
    name: "InvalidQueryValue",
    status: "422",
    codes: "`validation_failed`: a query parameter out of range, or text with NUL, \
            an unpaired surrogate or bytes that are not UTF-8 (`field` names it)",
    retry_after: false,
};
const INVALID_PATH_TEXT: Shared = Shared {
    name: "InvalidPathText",
    status: "422",
    codes: "`validation_failed`: a path segment that decodes to NUL or to bytes that are \
            not UTF-8 (`field` names it)",
    retry_after: false,
};
const UNAVAILABLE: Shared = Shared {
    name: "Unavailable",
    status: "503",
    codes: "`unavailable`: the database or the broker did not answer; retry after `Retry-After` seconds",
    retry_after: true,
};

/// Every shared response, for `components/responses`.
const ALL_SHARED: [&Shared; 10] = [
    &INVALID_JSON,
    &INVALID_QUERY,
    &UNAUTHORIZED,
    &PATH_NOT_FOUND,
    &PAYLOAD_TOO_LARGE,
    &UNSUPPORTED_MEDIA_TYPE,
    &INVALID_BODY,
    &INVALID_QUERY_VALUE,
    &INVALID_PATH_TEXT,
    &UNAVAILABLE,
];

/// Adds to each operation the shared failures it can answer (see the
/// module doc), the shared definitions themselves, and a `Retry-After`
/// header on every 429.
pub fn complete(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let components = openapi.components.get_or_insert_with(Default::default);
    for shared in ALL_SHARED {
        components
            .responses
            .insert(shared.name.to_owned(), RefOr::T(shared_response(shared)));
    }
    let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
    for (path, item) in openapi.paths.paths.iter_mut() {
        let touches_database = path.starts_with("/v1/");
        for operation in operations(item) {
            let mut add = Vec::new();
            if operation
                .security
                .as_ref()
                .is_some_and(|s| s.contains(&bearer))
            {
                add.push(&UNAUTHORIZED);
            }
            if operation.request_body.is_some() {
                add.extend([
                    &INVALID_JSON,
                    &PAYLOAD_TOO_LARGE,
                    &UNSUPPORTED_MEDIA_TYPE,
                    &INVALID_BODY,
                ]);
            }
            let parameters = operation.parameters.iter().flatten();
            let located = |place: ParameterIn| {
                parameters.clone().any(|p| match p {
                    RefOr::T(p) => p.parameter_in == place,
                    RefOr::Ref(_) => false,
                })
            };
            if located(ParameterIn::Query) {
                add.extend([&INVALID_QUERY, &INVALID_QUERY_VALUE]);
            }
            if located(ParameterIn::Path) {
                add.extend([&PATH_NOT_FOUND, &INVALID_PATH_TEXT]);
            }
            if touches_database {
                add.push(&UNAVAILABLE);
            }
            for shared in add {
                include(&mut operation.responses.responses, shared);
            }
            if let Some(RefOr::T(limited)) = operation.responses.responses.get_mut("429") {
                limited
                    .headers
                    .entry("Retry-After".to_owned())
                    .or_insert_with(retry_after);
            }
        }
    }
    openapi
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// Documents `shared` on an operation: a reference when the route says
/// nothing about that status, else its codes appended to the route's text
/// (once; a route whose own text already names the codes keeps it as is).
fn include(responses: &mut BTreeMap<String, RefOr<Response>>, shared: &Shared) {
    match responses.get_mut(shared.status) {
        None => {
            responses.insert(
                shared.status.to_owned(),
                RefOr::Ref(Ref::from_response_name(shared.name)),
            );
        }
        Some(RefOr::T(own)) => {
            let first_code = shared.codes.split('`').nth(1).unwrap_or(shared.codes);
            if !own.description.contains(&format!("`{first_code}`")) {
                own.description = format!("{}; or {}", own.description, shared.codes);
            }
            if shared.retry_after {
                own.headers
                    .entry("Retry-After".to_owned())
                    .or_insert_with(retry_after);
            }
        }
        // Two shared definitions for one status (400 body and 400 query)
        // never meet on one route today; the first one stays.
        Some(RefOr::Ref(_)) => {}
    }
}

fn shared_response(shared: &Shared) -> Response {
    let mut response = ResponseBuilder::new()
        .description(shared.codes)
        .content(
            "application/json",
            Content::new(Some(Ref::from_schema_name("ErrorBody"))),
        )
        .build();
    if shared.retry_after {
        response
            .headers
            .insert("Retry-After".to_owned(), retry_after());
    }
    response
}

fn retry_after() -> RefOr<Header> {
    RefOr::T(
        utoipa::openapi::HeaderBuilder::new()
            .schema(Some(u64::schema()))
            .description(Some("Seconds to wait before retrying"))
            .build(),
    )
}
