//! The operations endpoints' settings (docs/protocol.md#operations): the admin
//! credentials of the status page. Feature `http`.

use clap::Args;

use crate::http::ops_respond::AdminCredentials;

/// Admin credentials of the status page; the admin parts are off unless both are set.
#[derive(Clone, Args)]
pub struct OpsArgs {
    /// User name of the status page's admin parts (off when unset).
    #[arg(long, env = "RADIOVIS_ADMIN_USER", value_name = "RADIOVIS_ADMIN_USER")]
    pub admin_user: Option<String>,
    /// Password of the status page's admin parts (never logged).
    #[arg(
        long,
        env = "RADIOVIS_ADMIN_PASSWORD",
        value_name = "RADIOVIS_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    pub admin_password: Option<String>,
}

impl std::fmt::Debug for OpsArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpsArgs")
            .field("admin_user", &self.admin_user)
            .field(
                "admin_password",
                &self.admin_password.as_ref().map(|_| "***"),
            )
            .finish()
    }
}

impl OpsArgs {
    /// The admin credentials, `None` (admin parts off) unless both are set; logs which.
    pub fn admin(&self) -> Option<AdminCredentials> {
        let admin = AdminCredentials::new(
            self.admin_user.as_deref().unwrap_or(""),
            self.admin_password.as_deref().unwrap_or(""),
        );
        match (&admin, &self.admin_user, &self.admin_password) {
            (Some(_), _, _) => tracing::info!("status page admin parts on"),
            (None, None, None) => tracing::info!("status page admin parts off (RADIOVIS_ADMIN_USER unset)"),
            (None, _, _) => tracing::warn!(
                "status page admin parts off: RADIOVIS_ADMIN_USER and RADIOVIS_ADMIN_PASSWORD must both be set"
            ),
        }
        admin
    }
}
