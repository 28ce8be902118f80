pub mod backend;
pub mod stomp;
pub mod topic;
