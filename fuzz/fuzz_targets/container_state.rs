//! Container runtimes' state files -> `container_names::{docker_names, oci_names}`. The names and
//! labels in them are chosen by whoever started the container, so the files are hostile input:
//! whatever they hold, parsing gives names within the bounds or none, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rst_trace::container_names::{MAX_FIELD_BYTES, docker_names, oci_names};

fuzz_target!(|data: &[u8]| {
    for names in [docker_names(data), oci_names(data)].into_iter().flatten() {
        for field in [names.name, names.image, names.pod_uid, names.pod, names.namespace]
            .into_iter()
            .flatten()
        {
            assert!(
                !field.is_empty() && field.len() <= MAX_FIELD_BYTES,
                "a field out of bounds: {field:?}"
            );
        }
    }
});
