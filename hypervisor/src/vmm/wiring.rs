//! How the legacy devices reach the rest of the machine: the serial port's interrupt line,
//! the i8042's reset, and the console's rate-limited sink.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;

use husk_protocol::VmConfig;

use super::{setup, VmmError, SERIAL_BURST, SERIAL_RATE};
use crate::devices::legacy::RateLimitedWriter;
use crate::vcpu::{StopReason, StopSignal};

/// An edge on a legacy interrupt line, raised synchronously with KVM_IRQ_LINE from the vCPU
/// thread that caused it (the way QEMU drives its UART). An irqfd would inject from another
/// thread; under nested KVM on emulated SVM that path hung or crashed the guest during bursts of
/// console output, while this one did not.
#[derive(Debug)]
pub(super) struct IrqLine {
    pub(super) vm: Arc<kvm_ioctls::VmFd>,
    pub(super) irq: u32,
}

impl vm_superio::Trigger for IrqLine {
    type E = kvm_ioctls::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        self.vm.set_irq_line(self.irq, true)?;
        self.vm.set_irq_line(self.irq, false)
    }
}

/// A device line (the i8042 reset) that means "the guest shut down".
#[derive(Debug)]
pub(super) struct ShutdownTrigger(pub(super) Arc<StopSignal>, pub(super) &'static str);

impl vm_superio::Trigger for ShutdownTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.raise(StopReason::GuestShutdown(self.1.to_string()));
        Ok(())
    }
}

pub(super) fn console_writer(config: &VmConfig) -> Result<Box<dyn Write + Send>, VmmError> {
    let sink: Box<dyn Write + Send> = match &config.serial_log {
        Some(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| {
                    let named = std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
                    setup("opening the serial log")(named)
                })?,
        ),
        None => Box::new(std::io::sink()),
    };
    Ok(Box::new(RateLimitedWriter::new(
        sink,
        SERIAL_BURST,
        SERIAL_RATE,
    )))
}
