//! The OpenAPI 3.1 description, generated from the handlers' annotations
//! and the request/response types, so it cannot drift from the code.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
        (name = "users", description = "Accounts as others see them"),
        (name = "health", description = "Probes"),
        (name = "admin", description = "Operator endpoints, enabled by PARLEY_ADMIN_TOKEN"),
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
                    .build(),
            ),
        );
    }
}
