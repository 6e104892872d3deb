//! ACPI tests.
