//! `ih-worker`: leases due deliveries and sends them.
