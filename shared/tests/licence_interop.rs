//! Licences are standard JWTs: PyJWT (with `cryptography`'s Ed25519 keys) and jose (npm)
//! verify a Hookline licence unmodified, and Hookline verifies a licence PyJWT signed with the
//! same key.
//!
//! Needs `HOOKLINE_PYTHON`, a Python with `pyjwt[crypto]`, and `HOOKLINE_JOSE_PATH`, a
//! node_modules with `jose` (infra/test.sh sets both); without them the tests fail, never
//! skip.

use chrono::Utc;
use hookline::billing::licence::{LicenceClaims, LicenceKey, LicenceRequest};
use hookline::billing::tiers::{Tier, TierTable};
use std::io::Write;
use std::process::{Command, Stdio};

/// Verifies argv[1] (a token) with the raw base64 public key in argv[2]; prints the claims.
const PYJWT_VERIFY: &str = r#"
import base64, json, sys, jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
key = Ed25519PublicKey.from_public_bytes(base64.b64decode(sys.argv[2]))
print(json.dumps(jwt.decode(sys.argv[1], key, algorithms=["EdDSA"])))
"#;

/// Signs the JSON claims on stdin with the base64 seed in argv[1]; prints the token.
const PYJWT_SIGN: &str = r#"
import base64, json, sys, jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(sys.argv[1]))
print(jwt.encode(json.load(sys.stdin), key, algorithm="EdDSA"))
"#;

fn python() -> String {
    match std::env::var("HOOKLINE_PYTHON") {
        Ok(p) if !p.trim().is_empty() => p,
        _ => panic!(
            "HOOKLINE_PYTHON is not set: these tests need a Python with pyjwt[crypto] \
             (infra/test.sh installs it into the venv and sets HOOKLINE_PYTHON; by hand: \
             pip install 'pyjwt[crypto]' and HOOKLINE_PYTHON=<that python>)"
        ),
    }
}

/// Run a Python snippet; `Ok(stdout)` when it exits 0, else `Err(stderr)`.
fn run_python(script: &str, args: &[&str], stdin: &str) -> Result<String, String> {
    let python = python();
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run HOOKLINE_PYTHON={python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !stderr.contains("ModuleNotFoundError"),
            "HOOKLINE_PYTHON={python} lacks pyjwt[crypto]: {stderr}"
        );
        Err(stderr)
    }
}

fn licence(key: &LicenceKey, tier: Tier) -> (String, LicenceClaims) {
    let now = Utc::now();
    let issued = key
        .issue(
            &LicenceRequest {
                org_id: "org-selfhosted".into(),
                tier,
                seats: 40,
                expires_at: now + chrono::Duration::days(365),
            },
            TierTable::default().plan(tier),
            now,
        )
        .unwrap();
    (issued.licence, issued.claims)
}

#[test]
fn pyjwt_verifies_a_hookline_licence_unmodified() {
    let key = LicenceKey::generate();
    for tier in Tier::ALL {
        let (token, claims) = licence(&key, tier);
        let out = run_python(PYJWT_VERIFY, &[&token, &key.public_key_base64()], "")
            .unwrap_or_else(|e| panic!("PyJWT refused a {tier} licence: {e}"));
        let decoded: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(decoded, serde_json::to_value(&claims).unwrap(), "{tier}");
        assert_eq!(decoded["tier"], tier.as_str());
    }
}

/// Verifies argv[1] (a token) with the raw base64 public key in argv[2]; prints the claims.
const JOSE_VERIFY: &str = r#"
const jose = require("jose");
(async () => {
  const [token, raw] = process.argv.slice(1);
  const x = Buffer.from(raw, "base64").toString("base64url");
  const key = await jose.importJWK({ kty: "OKP", crv: "Ed25519", x }, "EdDSA");
  const { payload } = await jose.jwtVerify(token, key, { algorithms: ["EdDSA"] });
  console.log(JSON.stringify(payload));
})().catch((e) => { console.error(e.code || e.message); process.exit(1); });
"#;

/// Run the jose snippet with node; `Ok(stdout)` when it exits 0, else `Err(stderr)`.
fn run_jose(args: &[&str]) -> Result<String, String> {
    let modules = match std::env::var("HOOKLINE_JOSE_PATH") {
        Ok(p) if !p.trim().is_empty() => p,
        _ => panic!(
            "HOOKLINE_JOSE_PATH is not set: this test needs a node_modules with jose \
             (infra/test.sh installs it and sets HOOKLINE_JOSE_PATH; by hand: npm install \
             jose@5 and HOOKLINE_JOSE_PATH=<that node_modules>)"
        ),
    };
    let out = Command::new("node")
        .arg("-e")
        .arg(JOSE_VERIFY)
        .args(args)
        .env("NODE_PATH", &modules)
        .output()
        .unwrap_or_else(|e| panic!("cannot run node: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !stderr.contains("Cannot find module"),
        "HOOKLINE_JOSE_PATH={modules} lacks jose: {stderr}"
    );
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    } else {
        Err(stderr)
    }
}

#[test]
fn jose_verifies_a_hookline_licence_unmodified_and_refuses_another_keys() {
    let key = LicenceKey::generate();
    for tier in Tier::ALL {
        let (token, claims) = licence(&key, tier);
        let out = run_jose(&[&token, &key.public_key_base64()])
            .unwrap_or_else(|e| panic!("jose refused a {tier} licence: {e}"));
        let decoded: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(decoded, serde_json::to_value(&claims).unwrap(), "{tier}");
    }
    let (token, _) = licence(&key, Tier::Team);
    let err = run_jose(&[&token, &LicenceKey::generate().public_key_base64()]).unwrap_err();
    assert!(
        err.contains("ERR_JWS_SIGNATURE_VERIFICATION_FAILED"),
        "{err}"
    );
}

#[test]
fn pyjwt_refuses_a_hookline_licence_checked_with_another_key() {
    let (token, _) = licence(&LicenceKey::generate(), Tier::Enterprise);
    let other = LicenceKey::generate().public_key_base64();
    let err = run_python(PYJWT_VERIFY, &[&token, &other], "").unwrap_err();
    assert!(err.contains("InvalidSignatureError"), "{err}");
}

#[test]
fn hookline_verifies_a_licence_pyjwt_signed_with_the_same_key() {
    let key = LicenceKey::generate();
    let (_, claims) = licence(&key, Tier::Team);
    let token = run_python(
        PYJWT_SIGN,
        &[&key.to_base64()],
        &serde_json::to_string(&claims).unwrap(),
    )
    .unwrap_or_else(|e| panic!("PyJWT could not sign: {e}"));
    let verified = key.verifier().verify(&token, Utc::now()).unwrap();
    assert_eq!(verified, claims);
    // Signed by PyJWT with another key: refused.
    let stranger = run_python(
        PYJWT_SIGN,
        &[&LicenceKey::generate().to_base64()],
        &serde_json::to_string(&claims).unwrap(),
    )
    .unwrap();
    assert!(key.verifier().verify(&stranger, Utc::now()).is_err());
}
