//! Seoul subway network data and the accessible route engine (in progress).
