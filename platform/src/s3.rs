//! Presigned S3 URLs (AWS Signature V4, query form), so the platform can hand a device an
//! upload URL on a real S3-compatible server, as Tencent's platform does with COS.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Where uploads go when the platform delegates them to an S3 server.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// `http://127.0.0.1:9000`, no trailing slash.
    pub endpoint: String,
    /// Path-style bucket; empty when the endpoint names the bucket (virtual-hosted).
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
}

fn hmac(key: &[u8], msg: &str) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key");
    m.update(msg.as_bytes());
    m.finalize().into_bytes().to_vec()
}

/// RFC 3986 encoding as SigV4 wants it; `/` kept in paths.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl S3Target {
    /// A presigned URL for `method` on `key`, valid `expires_s` seconds from `now`
    /// (`YYYYMMDDTHHMMSSZ`).
    pub fn presign(&self, method: &str, key: &str, amz_date: &str, expires_s: u64) -> String {
        let date = &amz_date[..8];
        let host = self
            .endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&self.endpoint)
            .trim_end_matches('/');
        let path = if self.bucket.is_empty() {
            format!("/{}", uri_encode(key, true))
        } else {
            format!("/{}/{}", self.bucket, uri_encode(key, true))
        };
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let mut query = [
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256".to_string()),
            ("X-Amz-Credential", format!("{}/{scope}", self.access_key)),
            ("X-Amz-Date", amz_date.to_string()),
            ("X-Amz-Expires", expires_s.to_string()),
            ("X-Amz-SignedHeaders", "host".to_string()),
        ]
        .iter()
        .map(|(k, v)| format!("{}={}", uri_encode(k, false), uri_encode(v, false)))
        .collect::<Vec<_>>();
        query.sort();
        let query = query.join("&");
        let canonical = format!("{method}\n{path}\n{query}\nhost:{host}\n\nhost\nUNSIGNED-PAYLOAD");
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let k_date = hmac(format!("AWS4{}", self.secret_key).as_bytes(), date);
        let k_region = hmac(&k_date, &self.region);
        let k_service = hmac(&k_region, "s3");
        let k_signing = hmac(&k_service, "aws4_request");
        let signature = hex::encode(hmac(&k_signing, &to_sign));
        format!(
            "{}{path}?{query}&X-Amz-Signature={signature}",
            self.endpoint
        )
    }
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds `t` (UTC).
pub fn amz_date(t: u64) -> String {
    let days = (t / 86_400) as i64;
    let secs = t % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amz_dates() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(1_709_251_199), "20240229T235959Z");
    }

    /// The presigned GET example of AWS's SigV4 documentation ("Authenticating Requests:
    /// Using Query Parameters"), signature computed by AWS.
    #[test]
    fn presign_matches_the_aws_documentation_example() {
        let t = S3Target {
            endpoint: "https://examplebucket.s3.amazonaws.com".into(),
            bucket: String::new(),
            region: "us-east-1".into(),
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
        };
        let url = t.presign("GET", "test.txt", "20130524T000000Z", 86_400);
        assert!(url.starts_with("https://examplebucket.s3.amazonaws.com/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"), "{url}");
        assert!(
            url.ends_with(
                "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{url}"
        );
    }
}
