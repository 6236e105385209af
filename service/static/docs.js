// The API page: Swagger UI (from the swagger_ui_bundle package, served by /docs/assets/) over /openapi.json.
window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true });
