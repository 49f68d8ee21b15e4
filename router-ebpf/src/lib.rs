//! Shared pieces of the datapath programs.
#![no_std]
