//! Cloud Storage over its JSON API: `gs://BUCKET/PREFIX`.

use anyhow::Context as _;
use async_trait::async_trait;
use gcloud_storage::client::{Client, ClientConfig};
use gcloud_storage::http::objects::delete::DeleteObjectRequest;
use gcloud_storage::http::objects::download::Range;
use gcloud_storage::http::objects::get::GetObjectRequest;
use gcloud_storage::http::objects::list::{ListObjectsRequest, ListObjectsResponse};
use gcloud_storage::http::objects::upload::{UploadObjectRequest, UploadType};
use gcloud_storage::http::objects::Object;
use gcloud_storage::http::Error as GcsError;

use super::{emulator_endpoint, startup_error};
use crate::error::ConfigError;
use crate::ports::store::{ObjectInfo, ObjectStore, SUMMARY_LIMIT};

pub const SCHEME: &str = "gs://";
const EMULATOR: &str = "STORAGE_EMULATOR_HOST";
/// The custom metadata key of an object's summary.
const SUMMARY_KEY: &str = "bqdrain-summary";

pub fn is_gcs(uri: &str) -> bool {
    uri.starts_with(SCHEME)
}

/// The bucket and the key prefix (empty, or ending in `/`) of a `gs://` URI.
pub fn parse(uri: &str, flag: &str) -> Result<(String, String), ConfigError> {
    let rest = uri.strip_prefix(SCHEME).unwrap_or_default();
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid_bucket = (3..=222).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !is_gcs(uri) || !valid_bucket || prefix.contains("//") {
        return Err(ConfigError::new(
            flag,
            format!("{uri:?} is not a Cloud Storage folder URI"),
            "write it as gs://BUCKET or gs://BUCKET/PREFIX (bucket names are lowercase)",
        ));
    }
    let prefix = prefix.trim_end_matches('/');
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    };
    Ok((bucket.to_string(), prefix))
}

pub struct GcsStore {
    uri: String,
    bucket: String,
    prefix: String,
    client: Client,
}

/// The HTTP status of a failed call, whether or not its body parsed (the
/// emulator's error bodies do not).
fn http_status(err: &GcsError) -> Option<u16> {
    match err {
        GcsError::Response(r) => Some(r.code),
        GcsError::HttpClient(r) | GcsError::RawResponse(r, _) => r.status().map(|s| s.as_u16()),
        _ => None,
    }
}

impl GcsStore {
    pub async fn open(uri: &str, flag: &str) -> anyhow::Result<GcsStore> {
        let (bucket, prefix) = parse(uri, flag)?;
        let config = match emulator_endpoint(EMULATOR) {
            Some(endpoint) => ClientConfig {
                storage_endpoint: endpoint,
                ..Default::default()
            }
            .anonymous(),
            None => ClientConfig::default()
                .with_auth()
                .await
                .map_err(|e| startup_error("creating the Cloud Storage client", EMULATOR, e))?,
        };
        Ok(GcsStore {
            uri: uri.to_string(),
            bucket,
            prefix,
            client: Client::new(config),
        })
    }

    fn name(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

/// Cloud Storage's limit on an object's name: 1,024 bytes of UTF-8
/// (<https://cloud.google.com/storage/docs/objects#naming>).
const MAX_OBJECT_NAME_BYTES: usize = 1024;

/// Why Cloud Storage would refuse an object of this name, if it would.
fn object_name_problem(name: &str) -> Option<String> {
    (name.len() > MAX_OBJECT_NAME_BYTES).then(|| {
        format!(
            "its object name would be {} bytes of UTF-8, above Cloud Storage's limit of \
             {MAX_OBJECT_NAME_BYTES} ({name})",
            name.len()
        )
    })
}

impl GcsStore {
    /// Every page of the listing of `prefix` (by `delimiter`, if given),
    /// following page tokens to the end.
    async fn pages(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> anyhow::Result<Vec<ListObjectsResponse>> {
        let mut pages = Vec::new();
        let mut page_token = None;
        loop {
            let page = self
                .client
                .list_objects(&ListObjectsRequest {
                    bucket: self.bucket.clone(),
                    prefix: Some(self.name(prefix)),
                    delimiter: delimiter.map(str::to_string),
                    page_token: page_token.take(),
                    ..Default::default()
                })
                .await
                .with_context(|| format!("listing {}", self.location(prefix)))?;
            page_token = page.next_page_token.clone().filter(|t| !t.is_empty());
            pages.push(page);
            if page_token.is_none() {
                return Ok(pages);
            }
        }
    }

    fn location(&self, key: &str) -> String {
        format!("gs://{}/{}", self.bucket, self.name(key))
    }

    async fn upload(
        &self,
        key: &str,
        data: &[u8],
        summary: Option<&str>,
        if_absent: bool,
    ) -> Result<(), GcsError> {
        let request = UploadObjectRequest {
            bucket: self.bucket.clone(),
            if_generation_match: if_absent.then_some(0),
            ..Default::default()
        };
        let content_type = if key.ends_with(".json") {
            "application/json"
        } else {
            "application/octet-stream"
        };
        // Multipart rather than media: fake-gcs-server honours
        // ifGenerationMatch only there; Cloud Storage does in both.
        let object = Object {
            name: self.name(key),
            content_type: Some(content_type.to_string()),
            metadata: summary
                .filter(|s| s.len() <= SUMMARY_LIMIT)
                .map(|s| [(SUMMARY_KEY.to_string(), s.to_string())].into()),
            ..Default::default()
        };
        self.client
            .upload_object(
                &request,
                data.to_vec(),
                &UploadType::Multipart(Box::new(object)),
            )
            .await
            .map(drop)
    }
}

#[async_trait]
impl ObjectStore for GcsStore {
    fn name_problem(&self, key: &str) -> Option<String> {
        object_name_problem(&self.name(key))
    }

    fn uri(&self) -> &str {
        &self.uri
    }

    async fn list(&self, prefix: &str) -> anyhow::Result<Vec<ObjectInfo>> {
        let mut objects = Vec::new();
        for page in self.pages(prefix, None).await? {
            for object in page.items.unwrap_or_default() {
                if let Some(key) = object.name.strip_prefix(&self.prefix) {
                    objects.push(ObjectInfo {
                        key: key.to_string(),
                        size: object.size.max(0) as u64,
                        summary: object.metadata.and_then(|mut m| m.remove(SUMMARY_KEY)),
                        checksum: object.crc32c,
                    });
                }
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// One listing by delimiter: a page holds up to 1,000 folder names.
    async fn folders(&self, prefix: &str) -> anyhow::Result<Vec<String>> {
        let under = self.name(prefix);
        let mut names = Vec::new();
        for page in self.pages(prefix, Some("/")).await? {
            names.extend(page.prefixes.unwrap_or_default().iter().filter_map(|p| {
                let folder = p.strip_prefix(&under)?.strip_suffix('/')?;
                (!folder.is_empty()).then(|| folder.to_string())
            }));
        }
        names.sort();
        Ok(names)
    }

    async fn read(&self, key: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let request = GetObjectRequest {
            bucket: self.bucket.clone(),
            object: self.name(key),
            ..Default::default()
        };
        match self
            .client
            .download_object(&request, &Range::default())
            .await
        {
            Ok(data) => Ok(Some(data)),
            Err(e) if http_status(&e) == Some(404) => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.location(key))),
        }
    }

    async fn write(&self, key: &str, data: &[u8], summary: Option<&str>) -> anyhow::Result<()> {
        self.upload(key, data, summary, false)
            .await
            .with_context(|| format!("writing {}", self.location(key)))
    }

    async fn write_if_absent(
        &self,
        key: &str,
        data: &[u8],
        summary: Option<&str>,
    ) -> anyhow::Result<bool> {
        match self.upload(key, data, summary, true).await {
            Ok(()) => Ok(true),
            Err(e) if http_status(&e) == Some(412) => Ok(false),
            Err(e) => Err(e).with_context(|| format!("writing {}", self.location(key))),
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let request = DeleteObjectRequest {
            bucket: self.bucket.clone(),
            object: self.name(key),
            ..Default::default()
        };
        match self.client.delete_object(&request).await {
            Err(e) if http_status(&e) != Some(404) => {
                Err(e).with_context(|| format!("deleting {}", self.location(key)))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::object_name_problem;
    use super::parse;

    #[test]
    fn parses_bucket_and_prefix() {
        let p = |uri| parse(uri, "--destination").map_err(|e| e.to_string());
        assert_eq!(p("gs://exports").unwrap(), ("exports".into(), "".into()));
        assert_eq!(p("gs://exports/").unwrap(), ("exports".into(), "".into()));
        assert_eq!(
            p("gs://exports/daily/bq/").unwrap(),
            ("exports".into(), "daily/bq/".into())
        );
        let err = p("gs://Exports/x").unwrap_err();
        assert!(err.starts_with("--destination:"), "{err}");
        assert!(p("gs://a").is_err());
        assert!(p("s3://bucket").is_err());
    }

    #[test]
    fn object_names_are_limited_to_1024_bytes_of_utf8() {
        assert_eq!(object_name_problem(&"a".repeat(1024)), None);
        let problem = object_name_problem(&"a".repeat(1025)).unwrap();
        assert!(
            problem.contains("1025 bytes") && problem.contains("limit of 1024"),
            "{problem}"
        );
        // Bytes, not characters: 342 three-byte characters are 1,026 bytes.
        assert!(object_name_problem(&"€".repeat(342)).is_some());
    }
}
