//! `GET /v1/history` and `GET /v1/rotations/{id}/events`.
