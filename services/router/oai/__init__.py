"""OpenAI wire format <-> the router's GenerateRequest/Response: request bodies, SLO headers,
response and stream shapes, error shapes. Pure: no I/O, no server; services.router.http serves it."""
